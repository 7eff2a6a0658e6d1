-- wrk script: list the healthy instances of one service (100 instances).
request = function()
  return wrk.format("GET", "/v1/services/svc7")
end
dofile("bench/report.lua")
