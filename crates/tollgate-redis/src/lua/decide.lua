-- tollgate: decide costs for one key, all dimensions at once (GCRA).
-- KEYS[1]: the key's state (t<i>: TAT per dimension, u: pause end,
--          h: pause extensions added up), integer microseconds.
-- KEYS[2]: the key's own limits (i<i>: interval, b<i>: burst, q<i>: text).
-- ARGV: n, max_wait, then per dimension: interval, burst, cost.
-- A denial writes nothing. Redis' clock decides; no client clock.
-- Numbers go to Redis and back as numbers: integers below 2^53, which
-- Redis writes in full and replies as integers.
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local far = now + 4503599627370496
local n = tonumber(ARGV[1])
local max_wait = tonumber(ARGV[2])
local s, l
if n == 1 then
  s = redis.call('HMGET', KEYS[1], 'u', 'h', 't1')
  l = redis.call('HMGET', KEYS[2], 'i1', 'b1', 'q1')
else
  local sf, lf = {'u', 'h'}, {}
  for i = 1, n do
    sf[#sf + 1] = 't' .. i
    lf[#lf + 1] = 'i' .. i
    lf[#lf + 1] = 'b' .. i
    lf[#lf + 1] = 'q' .. i
  end
  s = redis.call('HMGET', KEYS[1], unpack(sf))
  l = redis.call('HMGET', KEYS[2], unpack(lf))
end
local paused = tonumber(s[1]) or 0
local held = tonumber(s[2]) or 0
local iv, bu, co, tat, q, dues = {}, {}, {}, {}, {}, {}
for i = 1, n do
  if l[3 * i - 2] then
    iv[i] = tonumber(l[3 * i - 2])
    bu[i] = tonumber(l[3 * i - 1])
    q[i] = l[3 * i]
  else
    iv[i] = tonumber(ARGV[3 * i])
    bu[i] = tonumber(ARGV[3 * i + 1])
    q[i] = ''
  end
  co[i] = tonumber(ARGV[3 * i + 2])
  tat[i] = tonumber(s[2 + i]) or 0
  dues[i] = 0
end
local function reply(code, dim, wait)
  local r = {code, dim, wait, now, held}
  for i = 1, n do
    r[#r + 1] = tat[i]
    r[#r + 1] = dues[i]
    r[#r + 1] = iv[i]
    r[#r + 1] = q[i]
  end
  return r
end
local due, blocking = now, 0
for i = 1, n do
  if co[i] > bu[i] then return reply('never', i - 1, 0) end
  local d = now
  if co[i] > 0 then
    -- From now, so that sums stay small and exact.
    local e = math.max(tat[i] - now, 0) + co[i] * iv[i] - bu[i] * iv[i]
    if e > 0 then d = now + e end
  end
  dues[i] = d - now
  if d > due then
    due = d
    blocking = i
  end
end
local wait = due - now
if blocking > 0 and wait > max_wait then return reply('deny', blocking - 1, wait) end
local set, keep = {}, paused
for i = 1, n do
  if co[i] > 0 then
    tat[i] = math.min(math.max(tat[i], due) + co[i] * iv[i], far)
    set[#set + 1] = 't' .. i
    set[#set + 1] = tat[i]
  end
  keep = math.max(keep, tat[i])
end
if #set > 0 then
  redis.call('HSET', KEYS[1], unpack(set))
  redis.call('PEXPIREAT', KEYS[1], math.floor(keep / 1000) + 2)
end
return reply('admit', 0, wait)
