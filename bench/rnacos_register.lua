-- wrk script: register a new ephemeral instance per request in r-nacos (Nacos v1
-- naming API), 100 services; an instance is identified by ip:port, so each request
-- gets a new address (and ROSTER_BENCH_PORT keeps warm-up and measured runs apart).
local n = 0
local port = os.getenv("ROSTER_BENCH_PORT") or "8080"
request = function()
  n = n + 1
  return wrk.format("POST", string.format(
    "/nacos/v1/ns/instance?serviceName=svc%d&ip=10.%d.%d.%d&port=%s&ephemeral=true",
    n % 100, math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256, port))
end
dofile("bench/report.lua")
