-- wrk script: one new etcd key per request through etcd's JSON gateway
-- (POST /v3/kv/put, key and value base64), the counterpart of register.lua:
-- keys spread over 100 prefixes, a value the size of a registration body.
local n = 0
local prefix = os.getenv("ROSTER_BENCH_PREFIX") or "r"
local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function b64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local v = a * 65536 + (b or 0) * 256 + (c or 0)
    local k = 4
    if not b then k = 2 elseif not c then k = 3 end
    for j = 1, 4 do
      if j <= k then
        local idx = math.floor(v / 2 ^ (6 * (4 - j))) % 64
        out[#out + 1] = alphabet:sub(idx + 1, idx + 1)
      else
        out[#out + 1] = "="
      end
    end
  end
  return table.concat(out)
end

request = function()
  n = n + 1
  local key = string.format("/services/svc%d/%s%d", n % 100, prefix, n)
  local value = string.format('{"address":"10.%d.%d.%d","port":8080,"ttl":"60s","tags":["v1"]}',
    math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256)
  local body = string.format('{"key":"%s","value":"%s"}', b64(key), b64(value))
  return wrk.format("POST", "/v3/kv/put", {["Content-Type"] = "application/json"}, body)
end
dofile("bench/report.lua")
