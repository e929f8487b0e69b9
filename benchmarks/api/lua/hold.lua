-- POST /v1/holds: one unit of one random SKU of SKUS, a new hold_id per request
-- (RUN, from the environment, keeps ids of separate runs apart). Partial, so a SKU
-- that runs out still answers 201. With PACE_MS, each connection waits between its
-- requests a time drawn from an exponential distribution of mean PACE_MS (rounded to
-- whole ms, as wrk's delay() takes them): independent arrivals, as storefront shoppers
-- make them, at a load below saturation. A constant wait would keep the connections in
-- lock-step, arriving as bursts of all of them at once, whose p99 is the burst's queue.
local skus = tonumber(os.getenv("SKUS") or "100000")
local run = os.getenv("RUN") or "0"
local pace = tonumber(os.getenv("PACE_MS") or "0")
local counter = 0

function setup(thread)
  thread:set("tid", tostring(math.random(1, 1000000000)))
end

function init(args)
  math.randomseed(tonumber(tid))
end

if pace > 0 then
  function delay()
    -- 1 - math.random() is in (0, 1], so the log is finite.
    return math.floor(-pace * math.log(1 - math.random()) + 0.5)
  end
end

request = function()
  counter = counter + 1
  local body = string.format(
    '{"hold_id":"b%s-%s-%d","channel":"web","partial":true,"ttl_seconds":600,' ..
    '"lines":[{"sku":"SKU-%07d","qty":1}]}',
    run, tid, counter, math.random(0, skus - 1))
  return wrk.format("POST", "/v1/holds", {["Content-Type"] = "application/json"}, body)
end
