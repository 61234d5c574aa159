-- wrk script: random puts (or gets) of 100-byte values over NKEYS keys (env NKEYS, OP=put|get).
local nkeys = tonumber(os.getenv("NKEYS") or "10000")
local op = os.getenv("OP") or "put"
local val = string.rep("v", 100)
request = function()
  local path = string.format("/kv/key%08d", math.random(1, nkeys))
  if op == "put" then
    return wrk.format("PUT", path, { ["Content-Type"] = "application/octet-stream" }, val)
  end
  return wrk.format("GET", path)
end
