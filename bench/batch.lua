-- wrk script: POST /v1/batch with ROSTER_BATCH (default 100) new instances per
-- request (unique ids over 100 services). ROSTER_BENCH_PREFIX (default b)
-- keeps a warm-up run's ids apart from the measured run's.
local n = 0
local size = tonumber(os.getenv("ROSTER_BATCH") or "100")
local prefix = os.getenv("ROSTER_BENCH_PREFIX") or "b"
request = function()
  local ops = {}
  for i = 1, size do
    n = n + 1
    ops[i] = string.format(
      '{"op":"register","service":"svc%d","id":"%s%d","instance":{"address":"10.%d.%d.%d","port":8080,"ttl":"60s","tags":["v1"]}}',
      n % 100, prefix, n, math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256)
  end
  return wrk.format("POST", "/v1/batch", {["Content-Type"] = "application/json"},
    '{"ops":[' .. table.concat(ops, ",") .. ']}')
end
dofile("bench/report.lua")
