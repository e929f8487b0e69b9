-- The hot SKU: every connection holds one unit of HOT_SKU (POST /v1/holds, a new
-- hold_id per request, partial) and releases (DELETE) a hold it was granted before its
-- next one, so the SKU's active holds stay the ones set up before the run plus at most
-- the holds in flight. RUN, from the environment, keeps ids of separate runs apart.
-- done() prints "holds: N", the POSTs answered 201, for the runner to count holds by.
local sku = os.getenv("HOT_SKU") or "SKU-0000000"
local run = os.getenv("RUN") or "0"
local counter = 0
granted = 0 -- a global: done() reads it with thread:get
local queue, head, tail = {}, 1, 0
local threads = {}

function setup(thread)
  thread:set("tid", tostring(math.random(1, 1000000000)))
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(tonumber(tid))
end

request = function()
  if head <= tail then
    local id = queue[head]
    queue[head] = nil
    head = head + 1
    return wrk.format("DELETE", "/v1/holds/" .. id)
  end
  counter = counter + 1
  local body = string.format(
    '{"hold_id":"h%s-%s-%d","channel":"web","partial":true,"ttl_seconds":600,' ..
    '"lines":[{"sku":"%s","qty":1}]}',
    run, tid, counter, sku)
  return wrk.format("POST", "/v1/holds", {["Content-Type"] = "application/json"}, body)
end

response = function(status, headers, body)
  if status == 201 then
    granted = granted + 1
    local id = string.match(body, '"hold_id":"([^"]+)"')
    if id then
      tail = tail + 1
      queue[tail] = id
    end
  end
end

function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do
    total = total + thread:get("granted")
  end
  io.write(string.format("holds: %d\n", total))
end
