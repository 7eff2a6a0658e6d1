-- wrk script: register a new instance per request (unique ids, 100 services).
local n = 0
request = function()
  n = n + 1
  local body = string.format('{"address":"10.%d.%d.%d","port":8080,"ttl":"60s","tags":["v1"]}',
    math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256)
  return wrk.format("PUT", "/v1/services/svc" .. (n % 100) .. "/instances/r" .. n, nil, body)
end
dofile("bench/report.lua")
