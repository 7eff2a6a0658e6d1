-- wrk script: heartbeat a random one of N registered instances per request.
local n = tonumber(os.getenv("ROSTER_BENCH_INSTANCES") or "10000")
request = function()
  local i = math.random(0, n - 1)
  return wrk.format("PUT", "/v1/services/svc" .. (i % 100) .. "/instances/i" .. i .. "/heartbeat")
end
dofile("bench/report.lua")
