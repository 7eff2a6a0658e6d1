-- wrk script: register a new instance per request (unique ids, 100 services).
local n = 0
request = function()
  n = n + 1
  local body = string.format('{"address":"10.%d.%d.%d","port":8080,"ttl":"60s","tags":["v1"]}',
    math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256)
  return wrk.format("PUT", "/v1/services/svc" .. (n % 100) .. "/instances/r" .. n, nil, body)
end
done = function(summary, latency, requests)
  local errors = summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format("RESULT rps=%.0f p50_us=%d p99_us=%d errors=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50), latency:percentile(99), errors))
end
