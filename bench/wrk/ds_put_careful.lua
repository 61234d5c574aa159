-- wrk script: random puts of a 100-byte value over 10k keys, written as a careful client writes.
-- Each connection is one writer (bench/throughput.py runs it with as many wrk threads as connections, so a
-- thread's responses come back in the order of its requests). A writer keeps the X-Context of its last read
-- or write of each key and sends it with its next write of that key; a key it has never seen is read first
-- (GET), then written with the context of that read. So a write supersedes what its writer last saw: only a
-- write that raced another writer's leaves a sibling. done() prints the writes and reads-before-write.
local keys = {}
for i = 1, 10000 do keys[i] = string.format("/kv/key%08d", i) end
local val = string.rep("v", 100)
local token = os.getenv("DYNAMOSTORE_TOKEN")

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

-- per thread (each thread has its own Lua state): contexts seen, the request in flight, counters
ctx = {}            -- path -> last X-Context seen ("" when the read found no context: a blind write is right)
pending = nil       -- path of the request in flight
pending_read = false
writes = 0
reads = 0
failed = 0
next_write = nil    -- path to write next (a read of it just came back)

local function headers(context)
  local h = {}
  if token then h["Authorization"] = "Bearer " .. token end
  if context ~= nil and context ~= "" then h["X-Context"] = context end
  return h
end

request = function()
  local path = next_write
  next_write = nil
  if path == nil then path = keys[math.random(1, 10000)] end
  pending = path
  local context = ctx[path]
  if context == nil then  -- never seen by this writer: read it first
    pending_read = true
    return wrk.format("GET", path, headers(nil))
  end
  pending_read = false
  local h = headers(context)
  h["Content-Type"] = "application/octet-stream"
  return wrk.format("PUT", path, h, val)
end

response = function(status, hdrs, body)
  local context = hdrs["X-Context"] or hdrs["x-context"]
  if pending_read then
    reads = reads + 1
    ctx[pending] = context or ""
    next_write = pending
  elseif status == 204 then
    writes = writes + 1
    ctx[pending] = context
  else
    failed = failed + 1
    ctx[pending] = nil  -- read it again before the next write
  end
end

function done(summary, latency, requests)
  local w, r, f = 0, 0, 0
  for _, t in ipairs(threads) do
    w = w + t:get("writes")
    r = r + t:get("reads")
    f = f + t:get("failed")
  end
  io.write(string.format("careful: writes %d reads-before-write %d failed-writes %d\n", w, r, f))
end
