-- wrk script: etcd's counterpart of ds_put_careful.lua. Each connection is one writer (one wrk thread per
-- connection). A writer keeps the mod_revision of its last read or write of each key and writes with a
-- transaction that succeeds only if the key is still at that revision (compare-and-swap: the careful write of
-- a linearizable store); a key it has never seen is read first (range). A transaction that fails (another
-- writer got there first) returns the key's current revision, used by the writer's next write of that key;
-- done() prints how many writes failed so. Values and keys as in the anchor's etcd_put.lua.
local b64chars = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
local function b64(data)
  return ((data:gsub('.', function(x)
    local r, b = '', x:byte()
    for i = 8, 1, -1 do r = r .. (b % 2^i - b % 2^(i-1) > 0 and '1' or '0') end
    return r
  end) .. '0000'):gsub('%d%d%d?%d?%d?%d?', function(x)
    if (#x < 6) then return '' end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == '1' and 2^(6-i) or 0) end
    return b64chars:sub(c + 1, c + 1)
  end) .. ({ '', '==', '=' })[#data % 3 + 1])
end
local keys = {}
for i = 1, 10000 do keys[i] = b64(string.format("key%08d", i)) end
local val = b64(string.rep("v", 100))
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("writer", #threads)
end

-- Each thread has its own Lua state, all seeded alike: without this every writer would pick the same keys in
-- the same order, and 32 writers would read, then write, the same key at the same moment.
function init(args)
  math.randomseed(os.time() * 1000 + writer)
  for _ = 1, writer do math.random() end
end

rev = {}            -- key -> mod_revision last seen by this writer ("0": absent)
pending = nil
pending_read = false
writes = 0
reads = 0
conflicts = 0
failed = 0
next_write = nil

request = function()
  local k = next_write
  next_write = nil
  if k == nil then k = keys[math.random(1, 10000)] end
  pending = k
  local r = rev[k]
  if r == nil then
    pending_read = true
    return wrk.format(nil, "/v3/kv/range", nil, '{"key":"' .. k .. '"}')
  end
  pending_read = false
  return wrk.format(nil, "/v3/kv/txn", nil,
    '{"compare":[{"key":"' .. k .. '","target":"MOD","result":"EQUAL","mod_revision":"' .. r .. '"}],' ..
    '"success":[{"request_put":{"key":"' .. k .. '","value":"' .. val .. '"}}],' ..
    '"failure":[{"request_range":{"key":"' .. k .. '"}}]}')
end

response = function(status, hdrs, body)
  if status ~= 200 then
    failed = failed + 1
    rev[pending] = nil
    return
  end
  if pending_read then
    reads = reads + 1
    rev[pending] = body:match('"mod_revision":"(%d+)"') or "0"
    next_write = pending
  elseif body:find('"succeeded":true', 1, true) then
    writes = writes + 1
    rev[pending] = body:match('"revision":"(%d+)"')  -- the header's: the put's own revision
  else
    conflicts = conflicts + 1
    rev[pending] = body:match('"mod_revision":"(%d+)"') or "0"
  end
end

function done(summary, latency, requests)
  local w, r, c, f = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    w = w + t:get("writes")
    r = r + t:get("reads")
    c = c + t:get("conflicts")
    f = f + t:get("failed")
  end
  io.write(string.format("careful: writes %d reads-before-write %d conflicts %d failed-writes %d\n", w, r, c, f))
end
