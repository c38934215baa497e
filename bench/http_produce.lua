-- wrk script for bench/http_produce.py: POST a JSON bet, a new Idempotency-Key per request.
--   wrk -t2 -c32 -d8s --latency -s bench/http_produce.lua http://127.0.0.1:PORT/bets
-- Set KEYS=off in the environment to send no Idempotency-Key (the plain route).
-- At the end prints "statuses: {...}" (status -> count, all threads) for the Python side to read.

local threads = {}
local run = tostring(os.time()) .. "-" .. tostring(math.random(1, 1000000000))

function setup(thread)
  thread:set("prefix", run .. "-" .. tostring(#threads) .. "-")
  table.insert(threads, thread)
end

function init(args)
  counter = 0
  statuses = {}
  keyed = os.getenv("KEYS") ~= "off"
  wrk.method = "POST"
  wrk.body = '{"userId":"u1","matchId":"m1","team":"home","amount":5}'
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  if keyed then
    wrk.headers["Idempotency-Key"] = prefix .. counter  -- unique across threads and runs
  end
  return wrk.format(nil, nil)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      total[status] = (total[status] or 0) + count
    end
  end
  local parts = {}
  for status, count in pairs(total) do
    table.insert(parts, string.format('"%d": %d', status, count))
  end
  table.sort(parts)
  io.write("statuses: {" .. table.concat(parts, ", ") .. "}\n")
  io.write(string.format("latency_p50_us: %d\nlatency_p99_us: %d\n",
    latency:percentile(50), latency:percentile(99)))
end
