-- wrk script: beat a random one of N instances preloaded in r-nacos (bench preload
-- --kind rnacos: instance i is 10.a.b.c:8080 in service svc{i % 100}).
local n = tonumber(os.getenv("ROSTER_BENCH_INSTANCES") or "10000")
request = function()
  local i = math.random(0, n - 1)
  return wrk.format("PUT", string.format(
    "/nacos/v1/ns/instance/beat?serviceName=svc%d&ip=10.%d.%d.%d&port=8080",
    i % 100, math.floor(i / 65536) % 256, math.floor(i / 256) % 256, i % 256))
end
dofile("bench/report.lua")
