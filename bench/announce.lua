-- wrk script for bench/http_announce.py: valid BEP 3 announces over a fixed infohash pool.
--
-- Arguments after "--": POOL_FILE SWARM_SIZE MODE
--   POOL_FILE   one percent-encoded infohash per line
--   SWARM_SIZE  peers per infohash. Each request picks one of them, so swarms stop growing.
--   MODE        "keepalive", or "close" to send Connection: close and open a connection per request
-- Each request draws an infohash and a peer slot at random. The slot fixes port and peer_id,
-- and `left` is 0 for every fourth slot (a seeder) and random for the others.
-- At the end, one JSON line starting with "RESULT " reports counts and latency percentiles.

local pool = {}
local swarm_size = 100
local headers = {}

function init(args)
   local pool_file = args[1]
   swarm_size = tonumber(args[2])
   if args[3] == "close" then
      headers["Connection"] = "close"
   end

   for line in io.lines(pool_file) do
      if #line > 0 then
         pool[#pool + 1] = line
      end
   end
   math.randomseed(os.time())
end

function request()
   local hash_index = math.random(1, #pool)
   local slot = math.random(0, swarm_size - 1)
   local left = 0
   if slot % 4 ~= 0 then
      left = math.random(1, 1000000000)
   end
   local path = string.format(
      "/announce?info_hash=%s&peer_id=-BN0001-%06d%06d&port=%d&uploaded=0&downloaded=0&left=%d&compact=1&numwant=50",
      pool[hash_index], hash_index, slot, 10000 + slot, left)
   return wrk.format("GET", path, headers)
end

function done(summary, latency, requests)
   local errors = summary.errors
   io.write(string.format(
      'RESULT {"requests": %d, "duration_us": %d, "bytes": %d, "errors_connect": %d, "errors_read": %d, ' ..
      '"errors_write": %d, "errors_status": %d, "errors_timeout": %d, "latency_p50_us": %d, ' ..
      '"latency_p90_us": %d, "latency_p99_us": %d, "latency_max_us": %d, "latency_mean_us": %.1f}\n',
      summary.requests, summary.duration, summary.bytes, errors.connect, errors.read, errors.write,
      errors.status, errors.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max, latency.mean))
end
