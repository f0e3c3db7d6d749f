-- tollgate: change one key's state (settle, learn, limit, pause).
-- KEYS[1]: the key's state (its layout in decide.lua).
-- ARGV: n, limits_ttl_ms, then per dimension nine values: interval,
-- burst, period_us, period_ns (text), kind, v1, v2, v3, v4.
-- Kinds: k keep, c charge v1, r refund v1, a at most v1, o observe
-- (limit v1, remaining v2), l limit (interval v1, burst v2, text v3,
-- period_us v4), u unlimit, h hold v1 microseconds, t full no sooner
-- than v1 microseconds from now (a key given back after an outage).
-- Replies 1 when the key was absent before the change, else 0.
local call, pack, unpackmp = redis.call, cmsgpack.pack, cmsgpack.unpack
local t = call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local far = now + 4503599627370496
local n = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2]) * 1000
local v0 = call('GET', KEYS[1])
local s
local fresh = 1
if v0 then s, fresh = {unpackmp(v0)}, 0 else s = {0, 0, 0, 0} end
local stored = s[4]
local own = s[3] > now
s[2] = held_of(s, now)
-- The tail (decide.lua): kept as it is, after the dimensions.
local tail, tb = {}, 4 + 5 * stored
for k = 1, 3 * stored do tail[k] = s[tb + k] or 0 end
for i = 1, stored do
  if not own then
    -- Own limits that ran out are dropped.
    local o = 5 * i
    s[o + 1], s[o + 2], s[o + 3], s[o + 4] = 0, 0, 0, ''
  end
end
if not own then s[3] = 0 end
for i = stored + 1, n do
  local o = 5 * i
  s[o], s[o + 1], s[o + 2], s[o + 3], s[o + 4] = 0, 0, 0, 0, ''
end
if n > stored then s[4] = n end
local paused = s[1]
local held = s[2]
local iv, bu, pus, pns, tat, kind, v = {}, {}, {}, {}, {}, {}, {}
local rescaled, set_own, was = {}, false, {}
local longest = -1
for i = 1, n do
  local a = 3 + 9 * (i - 1)
  local o = 5 * i
  if s[o + 1] > 0 then
    iv[i] = s[o + 1]
    bu[i] = s[o + 2]
    pus[i] = s[o + 3]
    pns[i] = string.match(s[o + 4], '^%d+ (%d+) %d+$') or ARGV[a + 3]
  else
    iv[i] = tonumber(ARGV[a])
    bu[i] = tonumber(ARGV[a + 1])
    pus[i] = tonumber(ARGV[a + 2])
    pns[i] = ARGV[a + 3]
  end
  kind[i] = ARGV[a + 4]
  v[i] = {ARGV[a + 5], ARGV[a + 6], ARGV[a + 7], ARGV[a + 8]}
  tat[i] = s[o]
  local before = iv[i]
  was[i] = before
  local k = kind[i]
  if k == 'l' then
    iv[i] = tonumber(v[i][1])
    bu[i] = tonumber(v[i][2])
    pus[i] = tonumber(v[i][4])
    s[o + 1], s[o + 2], s[o + 3], s[o + 4] = iv[i], bu[i], pus[i], v[i][3]
    set_own = true
  elseif k == 'u' then
    iv[i] = tonumber(ARGV[a])
    bu[i] = tonumber(ARGV[a + 1])
    pus[i] = tonumber(ARGV[a + 2])
    pns[i] = ARGV[a + 3]
    s[o + 1], s[o + 2], s[o + 3], s[o + 4] = 0, 0, 0, ''
  elseif k == 'o' then
    local limit = tonumber(v[i][1])
    if limit > 0 and limit ~= bu[i] and limit <= pus[i] * 1000 then
      iv[i] = math.ceil(pus[i] / limit)
      bu[i] = limit
      local text = v[i][1] .. ' ' .. pns[i] .. ' ' .. v[i][1]
      s[o + 1], s[o + 2], s[o + 3], s[o + 4] = iv[i], bu[i], pus[i], text
      set_own = true
    end
  elseif k == 'h' then
    longest = math.max(longest, tonumber(v[i][1]))
  end
  -- A changed limit re-spaces what is spent at the new interval.
  -- (Not from a limit of a million a second or more, which never binds:
  -- its debt is where the other dimensions put its admissions.)
  if iv[i] ~= before and tat[i] > now and before > 1 then
    rescaled[i] = now + math.ceil((tat[i] - now) * iv[i] / before)
  end
end
-- The pause in force after the change (a refund does not move into it).
local until_, ext = paused, 0
if longest >= 0 then
  local in_force = math.max(paused, now)
  until_ = math.min(math.max(in_force, now + longest), far)
  ext = until_ - in_force
end
-- A dimension's capacity (burst times interval). An interval rounded up
-- to 1 us from less (a limit of a million a second or more, which never
-- binds) would count its burst in microseconds, up to a thousand times
-- its real capacity: it is held to one period, as in the Rust store.
local function capacity(i)
  local cp = bu[i] * iv[i]
  if iv[i] <= 1 and cp > pus[i] then cp = pus[i] end
  return cp
end
-- A refund moves its dimension back here, so that the dimensions it did
-- not bind follow it (below): back, but not into a pause in force.
for i = 1, n do
  if kind[i] == 'r' then
    local x = rescaled[i] or tat[i]
    local back = math.max(x - tonumber(v[i][1]) * iv[i], 0)
    if until_ > now then back = math.max(back, math.min(x, until_ + capacity(i) - iv[i])) end
    rescaled[i] = back
  end
end
-- When re-spacing brings the re-spaced dimensions closer, the last
-- admission they allow (a TAT less one interval) moves closer by `shift`.
-- A dimension with the same limit that had room at that admission (its
-- TAT less its capacity before it) did not place it: its debt is where
-- the others put its admissions, so it moves back by `shift` (to no
-- earlier than the new last admission). One too fast to bind (an old
-- interval of at most 1 us) moves to at most that last admission.
local function respaced(i)
  return was[i] > 1 and rescaled[i] ~= nil and rescaled[i] ~= tat[i]
end
local moved, last_was, last_is = false, 0, 0
-- A re-spacing moves every dimension's queue; a refund only its own, and
-- a dimension too fast to bind that was refunded too.
local any_respaced = false
for i = 1, n do
  if respaced(i) and kind[i] ~= 'r' then any_respaced = true end
end
for i = 1, n do
  if respaced(i) then
    -- Only a queue moves (a TAT ahead of now).
    if rescaled[i] < tat[i] and tat[i] > now then moved = true end
    last_was = math.max(last_was, tat[i] - was[i])
    last_is = math.max(last_is, rescaled[i] - iv[i])
  end
end
if moved then
  local shift = math.max(last_was - last_is, 0)
  local follows = {}
  for i = 1, n do
    follows[i] = was[i] > 1 and not respaced(i) and tat[i] > last_is
      and math.max(tat[i] - bu[i] * iv[i], 0) < last_was and any_respaced
  end
  local latest = 0
  for i = 1, n do
    if follows[i] then rescaled[i] = math.max(tat[i] - shift, last_is) end
    if was[i] > 1 then
      latest = math.max(latest, (rescaled[i] or tat[i]) - iv[i])
    end
  end
  for i = 1, n do
    -- One too fast to bind follows when refunded too.
    if was[i] <= 1 and (any_respaced or kind[i] == 'r') then
      rescaled[i] = math.min(rescaled[i] or tat[i], latest)
    end
  end
end
-- Own limits last limits_ttl from the last one set.
local any_own = false
for i = 1, s[4] do
  if s[5 * i + 1] > 0 then any_own = true end
end
if set_own then
  s[3] = now + ttl
elseif not any_own then
  s[3] = 0
end
local keep = until_
for i = 1, n do
  -- A refund is in `rescaled` already.
  local k, x = kind[i], rescaled[i] or tat[i]
  local cp = capacity(i)
  if k == 'c' then
    x = math.min(math.max(x, now) + tonumber(v[i][1]) * iv[i], far)
  elseif k == 'a' or k == 'o' then
    local m = tonumber(k == 'a' and v[i][1] or v[i][2])
    if m < bu[i] then x = math.max(x, now + cp - m * iv[i]) end
  elseif k == 'h' then
    x = math.min(math.max(math.max(x, now) + ext, until_ + cp - iv[i]), far)
  elseif k == 't' then
    x = math.min(math.max(x, now + tonumber(v[i][1])), far)
  end
  tat[i] = x
  s[5 * i] = x
end
for i = 1, s[4] do keep = math.max(keep, s[5 * i]) end
if ext > 0 then
  held = held + ext
  s[1] = until_
  s[2] = held
end
if s[3] > keep then keep = s[3] end
if keep > now then
  tb = 4 + 5 * s[4]
  for k = 1, 3 * s[4] do s[tb + k] = tail[k] or 0 end
  local packed = pack(unpack(s, 1, 4 + 8 * s[4]))
  -- Nothing changed, nothing written.
  if packed ~= v0 then
    call('SET', KEYS[1], packed, 'PXAT', math.ceil(keep / 1000) + 1)
  end
elseif v0 then
  call('DEL', KEYS[1])
end
return {fresh}
