-- wrk script: random blind puts of a 100-byte value over 10k keys (the etcd anchor's workload).
-- Blind writes carry no X-Context, so repeated writes to one key are concurrent by definition and kept
-- as siblings (bounded by writes per key during the run); the summary reports how many there were.
local keys = {}
for i = 1, 10000 do keys[i] = string.format("/kv/key%08d", i) end
local val = string.rep("v", 100)
wrk.method = "PUT"
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.body = val
request = function()
  return wrk.format(nil, keys[math.random(1, 10000)])
end
-- With tokens on (bench/throughput.py --tls or --auth) every request carries one.
local token = os.getenv("DYNAMOSTORE_TOKEN")
if token then wrk.headers["Authorization"] = "Bearer " .. token end
