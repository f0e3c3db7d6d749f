-- tollgate: change one key's state (settle, learn, limit, pause).
-- KEYS[1]: the key's state; KEYS[2]: its own limits (see decide.lua).
-- ARGV: n, limits_ttl_ms, then per dimension nine values: interval,
-- burst, period_us, period_ns (text), kind, v1, v2, v3, v4.
-- Kinds: k keep, c charge v1, r refund v1, a at most v1, o observe
-- (limit v1, remaining v2), l limit (interval v1, burst v2, text v3,
-- period_us v4), u unlimit, h hold v1 microseconds.
local function fmt(x) return string.format('%.0f', x) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local far = now + 4503599627370496
local n = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local sf, lf = {'u', 'h'}, {}
for i = 1, n do
  sf[#sf + 1] = 't' .. i
  lf[#lf + 1] = 'i' .. i
  lf[#lf + 1] = 'b' .. i
  lf[#lf + 1] = 'p' .. i
  lf[#lf + 1] = 'n' .. i
end
local s = redis.call('HMGET', KEYS[1], unpack(sf))
local l = redis.call('HMGET', KEYS[2], unpack(lf))
local paused = tonumber(s[1]) or 0
local held = tonumber(s[2]) or 0
local iv, bu, pus, pns, tat, kind, v = {}, {}, {}, {}, {}, {}, {}
local own_set, own_del, rescaled = {}, {}, {}
local longest = -1
for i = 1, n do
  local a = 3 + 9 * (i - 1)
  if l[4 * i - 3] then
    iv[i] = tonumber(l[4 * i - 3])
    bu[i] = tonumber(l[4 * i - 2])
    pus[i] = tonumber(l[4 * i - 1])
    pns[i] = l[4 * i]
  else
    iv[i] = tonumber(ARGV[a])
    bu[i] = tonumber(ARGV[a + 1])
    pus[i] = tonumber(ARGV[a + 2])
    pns[i] = ARGV[a + 3]
  end
  kind[i] = ARGV[a + 4]
  v[i] = {ARGV[a + 5], ARGV[a + 6], ARGV[a + 7], ARGV[a + 8]}
  tat[i] = tonumber(s[2 + i]) or 0
  local before = iv[i]
  local k = kind[i]
  if k == 'l' then
    iv[i] = tonumber(v[i][1])
    bu[i] = tonumber(v[i][2])
    pus[i] = tonumber(v[i][4])
    local text = v[i][3]
    pns[i] = string.match(text, '^%d+ (%d+) %d+$') or pns[i]
    for _, f in ipairs({'i', fmt(iv[i]), 'b', fmt(bu[i]), 'q', text, 'p', fmt(pus[i]), 'n', pns[i]}) do
      own_set[#own_set + 1] = f
    end
    for j = #own_set - 9, #own_set, 2 do own_set[j] = own_set[j] .. i end
  elseif k == 'u' then
    iv[i] = tonumber(ARGV[a])
    bu[i] = tonumber(ARGV[a + 1])
    pus[i] = tonumber(ARGV[a + 2])
    pns[i] = ARGV[a + 3]
    for _, f in ipairs({'i', 'b', 'q', 'p', 'n'}) do own_del[#own_del + 1] = f .. i end
  elseif k == 'o' then
    local limit = tonumber(v[i][1])
    if limit > 0 and limit ~= bu[i] and limit <= pus[i] * 1000 then
      iv[i] = math.ceil(pus[i] / limit)
      bu[i] = limit
      local text = v[i][1] .. ' ' .. pns[i] .. ' ' .. v[i][1]
      for _, f in ipairs({'i', fmt(iv[i]), 'b', fmt(bu[i]), 'q', text, 'p', fmt(pus[i]), 'n', pns[i]}) do
        own_set[#own_set + 1] = f
      end
      for j = #own_set - 9, #own_set, 2 do own_set[j] = own_set[j] .. i end
    end
  elseif k == 'h' then
    longest = math.max(longest, tonumber(v[i][1]))
  end
  -- A changed limit re-spaces what is spent at the new interval.
  -- (Not from a limit of a million a second or more, which never binds:
  -- its debt is where the other dimensions put its admissions.)
  if iv[i] ~= before and tat[i] > now and before > 1 then
    rescaled[i] = now + math.floor((tat[i] - now) * iv[i] / before)
  end
end
if #own_set > 0 then
  redis.call('HSET', KEYS[2], unpack(own_set))
  redis.call('PEXPIRE', KEYS[2], ttl)
end
if #own_del > 0 then redis.call('HDEL', KEYS[2], unpack(own_del)) end
local until_, ext = paused, 0
if longest >= 0 then
  local in_force = math.max(paused, now)
  until_ = math.min(math.max(in_force, now + longest), far)
  ext = until_ - in_force
end
local set, keep = {}, until_
for i = 1, n do
  local k, x = kind[i], rescaled[i] or tat[i]
  if k == 'c' then
    x = math.min(math.max(x, now) + tonumber(v[i][1]) * iv[i], far)
  elseif k == 'r' then
    x = math.max(x - tonumber(v[i][1]) * iv[i], 0)
  elseif k == 'a' or k == 'o' then
    local m = tonumber(k == 'a' and v[i][1] or v[i][2])
    if m < bu[i] then x = math.max(x, now + bu[i] * iv[i] - m * iv[i]) end
  elseif k == 'h' then
    x = math.min(math.max(math.max(x, now) + ext, until_ + bu[i] * iv[i] - iv[i]), far)
  end
  if x ~= tat[i] then
    tat[i] = x
    set[#set + 1] = 't' .. i
    set[#set + 1] = fmt(x)
  end
  keep = math.max(keep, tat[i])
end
if ext > 0 then
  held = held + ext
  set[#set + 1] = 'u'
  set[#set + 1] = fmt(until_)
  set[#set + 1] = 'h'
  set[#set + 1] = fmt(held)
end
if #set > 0 then
  if keep > now then
    redis.call('HSET', KEYS[1], unpack(set))
    redis.call('PEXPIREAT', KEYS[1], fmt(math.ceil(keep / 1000) + 1))
  else
    redis.call('DEL', KEYS[1])
  end
end
return 'ok'
