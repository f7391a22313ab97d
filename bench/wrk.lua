-- Request script of the load suite (ci/bench.sh), run by the patched wrk:
--
--   wrk ... -s bench/wrk.lua URL -- METHOD [BODY_FILE TARGETS]
--
-- GET and HEAD send one fixed request, which wrk builds once: no Lua runs per request, so the
-- client costs the same against every server. PUT sends the bytes of BODY_FILE to TARGETS
-- distinct paths URL/0 .. URL/(TARGETS-1) in turn; the requests are built once, in init.
-- At the end one line "callfs-bench-result {json}" gives bench/loadgen.py the raw counts.

local requests, sent = {}, 0

function init(args)
   local method = args[1] or "GET"
   wrk.method = method
   if method ~= "PUT" then
      return
   end
   local file = assert(io.open(args[2], "rb"))
   local body = file:read("*a")
   file:close()
   for i = 0, tonumber(args[3]) - 1 do
      requests[#requests + 1] = wrk.format("PUT", wrk.path .. "/" .. i, nil, body)
   end
   -- Defining request() makes wrk ask for every request; it must exist only for PUT.
   request = function()
      sent = sent % #requests + 1
      return requests[sent]
   end
end

function done(summary, latency, _)
   local e = summary.errors
   io.write(string.format(
      'callfs-bench-result {"duration_us":%d,"requests":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"mean":%.1f,"max":%d}}\n',
      summary.duration, summary.requests, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.mean, latency.max))
end
