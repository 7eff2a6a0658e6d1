-- wrk script: heartbeat a random one of N registered instances per request.
local n = tonumber(os.getenv("ROSTER_BENCH_INSTANCES") or "10000")
request = function()
  local i = math.random(0, n - 1)
  return wrk.format("PUT", "/v1/services/svc" .. (i % 100) .. "/instances/i" .. i .. "/heartbeat")
end
done = function(summary, latency, requests)
  local errors = summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format("RESULT rps=%.0f p50_us=%d p99_us=%d errors=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50), latency:percentile(99), errors))
end
