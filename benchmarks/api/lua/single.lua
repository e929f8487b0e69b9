-- GET one random SKU of SKUS (environment) on the web channel per request.
local skus = tonumber(os.getenv("SKUS") or "100000")

function setup(thread)
  thread:set("seed", math.random(1, 1000000))
end

function init(args)
  math.randomseed(seed)
end

request = function()
  local path = string.format("/v1/availability/SKU-%07d?channel=web", math.random(0, skus - 1))
  return wrk.format("GET", path)
end
