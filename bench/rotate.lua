-- wrk script for bench/run.py: POST /v1/token, each request with the next JWT from a file.
--
--   wrk -t1 -c64 -d10s -s bench/rotate.lua http://127.0.0.1:PORT -- JWT_FILE [cold]
--
-- JWT_FILE holds one JWT per line, optionally followed by a tab and the request's JSON body.
-- Requests rotate through them in order; `wrapped` in the
-- summary says whether the rotation came back to the first JWT (a "never seen" workload must
-- not wrap). In `cold` mode each answer's body is read to count distinct subjects served
-- (their `devices/<subject>/#` resource) and the tokens per answer. done() prints one line,
-- "BENCHJSON {...}", that run.py parses: status counts, 503s with and without Retry-After,
-- socket errors and latency percentiles in microseconds.

local requests_ = {}
local count = 0
local index = 0
local cold = false
local seen = {}

sent = 0
wrapped = 0
statuses = {}
retry_after_503 = 0
served_subjects = 0
tokens_min = -1
tokens_max = -1

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local path = args[1]
  cold = args[2] == "cold"
  local file = assert(io.open(path, "r"))
  for line in file:lines() do
    if #line > 0 then
      count = count + 1
      local jwt, body = string.match(line, "^([^\t]+)\t(.+)$")
      if jwt then
        requests_[count] = wrk.format("POST", "/v1/token", {
          ["Authorization"] = "Bearer " .. jwt,
          ["Content-Type"] = "application/json",
        }, body)
      else
        requests_[count] = wrk.format("POST", "/v1/token", {
          ["Authorization"] = "Bearer " .. line,
          ["Content-Length"] = "0",
        })
      end
    end
  end
  file:close()
  assert(count > 0, "no JWT in " .. path)
end

function request()
  index = index + 1
  if index > count then
    index = 1
    wrapped = 1
  end
  sent = sent + 1
  return requests_[index]
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 503 then
    for name, _ in pairs(headers) do
      if string.lower(name) == "retry-after" then
        retry_after_503 = retry_after_503 + 1
        break
      end
    end
  elseif cold and status == 200 and body then
    local subject = string.match(body, '"devices/([^/"]+)/#"')
    if subject and not seen[subject] then
      seen[subject] = true
      served_subjects = served_subjects + 1
    end
    local n = 0
    for _ in string.gmatch(body, '"type"') do
      n = n + 1
    end
    if tokens_min < 0 or n < tokens_min then tokens_min = n end
    if n > tokens_max then tokens_max = n end
  end
end

local function add_counts(into, from)
  for k, v in pairs(from) do
    into[k] = (into[k] or 0) + v
  end
end

function done(summary, latency, _requests)
  local total = {
    sent = 0, wrapped = 0, retry_after_503 = 0, served_subjects = 0,
    tokens_min = -1, tokens_max = -1,
  }
  local codes = {}
  for _, t in ipairs(threads) do
    total.sent = total.sent + t:get("sent")
    total.wrapped = math.max(total.wrapped, t:get("wrapped"))
    total.retry_after_503 = total.retry_after_503 + t:get("retry_after_503")
    total.served_subjects = total.served_subjects + t:get("served_subjects")
    local tmin, tmax = t:get("tokens_min"), t:get("tokens_max")
    if tmin >= 0 and (total.tokens_min < 0 or tmin < total.tokens_min) then
      total.tokens_min = tmin
    end
    total.tokens_max = math.max(total.tokens_max, tmax)
    add_counts(codes, t:get("statuses"))
  end
  local parts = {}
  for code, n in pairs(codes) do
    table.insert(parts, string.format('"%d": %d', code, n))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}, ' ..
    '"statuses": {%s}, "sent": %d, "wrapped": %d, "retry_after_503": %d, ' ..
    '"served_subjects": %d, "tokens_min": %d, "tokens_max": %d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean,
    table.concat(parts, ", "), total.sent, total.wrapped, total.retry_after_503,
    total.served_subjects, total.tokens_min, total.tokens_max))
end
