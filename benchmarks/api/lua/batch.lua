-- POST /v1/availability/query with BATCH (environment) random SKUs of SKUS per request.
local skus = tonumber(os.getenv("SKUS") or "100000")
local batch = tonumber(os.getenv("BATCH") or "50")
local headers = { ["Content-Type"] = "application/json" }

function setup(thread)
  thread:set("seed", math.random(1, 1000000))
end

function init(args)
  math.randomseed(seed)
end

request = function()
  local names = {}
  for i = 1, batch do
    names[i] = string.format('"SKU-%07d"', math.random(0, skus - 1))
  end
  local body = '{"channel":"web","skus":[' .. table.concat(names, ",") .. "]}"
  return wrk.format("POST", "/v1/availability/query", headers, body)
end
