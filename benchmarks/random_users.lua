-- wrk script: each request asks for the top 10 of a random known user of the benchmark's
-- synthetic model (u0 .. u<BENCH_USERS-1>), so no cache or batch sees the same user twice
-- in a row. Non-2xx answers are counted by wrk itself ("Non-2xx or 3xx responses").
local users = tonumber(os.getenv("BENCH_USERS") or "20000")
local k = os.getenv("BENCH_K") or "10"
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("id", threads)
end

function init(args)
  math.randomseed(os.time() * 1000 + id)
end

function request()
  local user = math.random(0, users - 1)
  return wrk.format("GET", "/v1/recommendations?user_id=u" .. user .. "&k=" .. k)
end
