-- wrk script: register a new instance per request (unique ids, 100 services).
-- ROSTER_BENCH_PREFIX (default r) keeps a warm-up run's ids apart from the measured run's.
local n = 0
local prefix = os.getenv("ROSTER_BENCH_PREFIX") or "r"
request = function()
  n = n + 1
  local body = string.format('{"address":"10.%d.%d.%d","port":8080,"ttl":"60s","tags":["v1"]}',
    math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256)
  return wrk.format("PUT", "/v1/services/svc" .. (n % 100) .. "/instances/" .. prefix .. n, nil, body)
end
dofile("bench/report.lua")
