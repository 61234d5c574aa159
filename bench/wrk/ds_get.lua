-- wrk script: random gets over 10k keys (R from the cluster default, 2 of N=3).
local keys = {}
for i = 1, 10000 do keys[i] = string.format("/kv/key%08d", i) end
wrk.method = "GET"
request = function()
  return wrk.format(nil, keys[math.random(1, 10000)])
end
-- With tokens on (bench/throughput.py --tls or --auth) every request carries one.
local token = os.getenv("DYNAMOSTORE_TOKEN")
if token then wrk.headers["Authorization"] = "Bearer " .. token end
