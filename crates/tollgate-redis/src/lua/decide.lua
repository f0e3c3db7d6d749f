-- tollgate: decide costs for one or more keys, each for all its
-- dimensions at once (GCRA), in turn, at one instant of Redis' clock.
--
-- A key's state is one string, MessagePack values one after the other:
--   u (pause end), h (pause extensions added up), e (end of its own
--   limits; 0 for none), n (dimensions stored), then per dimension
--   t (TAT), and its own limit: i (interval; 0 for none), b (burst),
--   p (period), q (text: 'count period_ns burst'; '' for none); then,
--   after the n dimensions, per dimension the strictest default limit
--   passed lately (one key, one quota): mi (interval), mb (burst), mu
--   (until when it holds; 0 for none). Keys written before that tail
--   existed have none: it is taken as absent.
-- Instants and intervals are integer microseconds: exact in Lua's
-- numbers, and packed as integers.
--
-- KEYS: one per decision, the key's state.
-- ARGV: one MessagePack string per decision: n, max_wait, then per
--   dimension interval, burst, cost.
-- Replies one MessagePack string: per decision its code (0 admit, 1 deny,
--   2 never), blocking dimension, wait, now, pause extensions, pause end,
--   whether the key was absent (1) or not (0), whether a stricter limit
--   passed by another process decided (1) or not (0), then per
--   dimension TAT, due, interval in force, own limit text ('' for none);
--   or code 3 and a message when that key could not be read (the other
--   decisions go on).
-- A denial writes nothing. Tables are reused from one decision to the
-- next, and the common key (one dimension, no own limit, no pause
-- extensions) is decided in locals alone: Lua in Redis is quick only with
-- few allocations.
local call, pack, unpackmp, unpack, pcall = redis.call, cmsgpack.pack, cmsgpack.unpack, unpack, pcall
local t = call('TIME')
local now = t[1] * 1000000 + t[2]
local far = now + 4503599627370496
-- `PXAT`'s argument for a key to keep until `keep` (microseconds): the
-- millisecond after it, and one more. A call of several decisions formats
-- each instant once (`pxats`); a number would be formatted by Redis as a
-- float.
local pxats
local function pxat(keep)
  keep = keep / 1000
  keep = keep - keep % 1 + 2
  if not pxats then return string.format('%d', keep) end
  local px = pxats[keep]
  if not px then
    px = string.format('%d', keep)
    pxats[keep] = px
  end
  return px
end

-- The common key, as `decide` below decides it, without tables: one
-- dimension, the key absent or holding one dimension, no own limit and no
-- pause extensions (a pause may have ended or be in force: it is in the
-- TAT). Returns the decision's reply values; nothing, having written
-- nothing, for any other decision.
local function decide_one(key, blob)
  local n, max_wait, pi, pb, c, more = unpackmp(blob)
  if n ~= 1 or more ~= nil then return end
  local v = call('GET', key)
  local u, tat, mi, mb, mu, fresh = 0, 0, 0, 0, 0, 1
  if v then
    local h, e, stored, extra, _
    u, h, e, stored, tat, _, _, _, _, mi, mb, mu, extra = unpackmp(v)
    if h ~= 0 or e ~= 0 or stored ~= 1 or extra ~= nil then return end
    mi, mb, mu, fresh = mi or 0, mb or 0, mu or 0, 0
  end
  local iv, bu, stricter = pi, pb, 0
  if mu > now and (mi > pi or (mi == pi and mb < pb)) then
    iv, bu, stricter = mi, mb, 1
  else
    local hold = pi * pb
    if hold < 1000000 then hold = 1000000 end
    mi, mb, mu = pi, pb, now + hold
  end
  -- due: how long after now the cost fits.
  local code, due = 0, 0
  if c > bu then
    code = 2
  else
    if c > 0 then
      local e = tat - now
      if e < 0 then e = 0 end
      e = e + (c - bu) * iv
      if e > 0 then due = e end
    end
    if due > max_wait then
      code = 1
    elseif c > 0 then
      local x = tat
      if x < now + due then x = now + due end
      x = x + c * iv
      if x > far then x = far end
      tat = x
      local keep = u
      if x > keep then keep = x end
      call('SET', key, pack(u, 0, 0, 1, x, 0, 0, 0, '', mi, mb, mu), 'PXAT', pxat(keep))
    end
  end
  return code, 0, due, now, 0, u, fresh, stricter, tat, due, iv, ''
end

-- A call of one common decision (any single caller's) is answered
-- without building anything else: no tables, no further functions.
if #KEYS == 1 then
  local ok, code, dim, wait, at, held, pause, fresh, stricter, tat1, due1, iv1, q1 =
    pcall(decide_one, KEYS[1], ARGV[1])
  if not ok then
    return pack(3, tostring(type(code) == 'table' and code.err or code))
  end
  if code then
    return pack(code, dim, wait, at, held, pause, fresh, stricter, tat1, due1, iv1, q1)
  end
end

-- The general path's tables, made when it is first taken.
local iv, bu, co, tat, dues, q, mi, mb, mu
local r, w = {}, 0

local function decide(key, blob)
  local code1, dim1, wait1, at, held, pause, fresh1, stricter1, tat1, due1, iv1, q1 =
    decide_one(key, blob)
  if code1 then
    r[w + 1], r[w + 2], r[w + 3], r[w + 4], r[w + 5], r[w + 6] = code1, dim1, wait1, at, held, pause
    r[w + 7], r[w + 8], r[w + 9], r[w + 10], r[w + 11], r[w + 12] = fresh1, stricter1, tat1, due1, iv1, q1
    w = w + 12
    return
  end
  if not iv then
    iv, bu, co, tat, dues, q = {}, {}, {}, {}, {}, {}
    mi, mb, mu = {}, {}, {}
  end
  local a = {unpackmp(blob)}
  local n, max_wait = a[1], a[2]
  local v = call('GET', key)
  local s, fresh
  if v then s, fresh = {unpackmp(v)}, 0 else s, fresh = {0, 0, 0, 0}, 1 end
  local stored = s[4]
  local own = s[3] > now
  if s[2] > 0 then s[2] = held_of(s, now) end
  local tb = 4 + 5 * stored
  for i = 1, stored do
    local o = tb + 3 * i
    mi[i], mb[i], mu[i] = s[o - 2] or 0, s[o - 1] or 0, s[o] or 0
  end
  for i = stored + 1, n do
    local o = 5 * i
    s[o], s[o + 1], s[o + 2], s[o + 3], s[o + 4] = 0, 0, 0, 0, ''
    mi[i], mb[i], mu[i] = 0, 0, 0
  end
  if n > stored then s[4] = n end
  local stricter = 0
  for i = 1, n do
    local b, o = 3 * i, 5 * i
    tat[i] = s[o]
    if own and s[o + 1] > 0 then
      iv[i], bu[i], q[i] = s[o + 1], s[o + 2], s[o + 4]
    else
      local pi, pb = a[b], a[b + 1]
      if mu[i] > now and (mi[i] > pi or (mi[i] == pi and mb[i] < pb)) then
        -- Another process passed a stricter limit lately: it holds.
        iv[i], bu[i], stricter = mi[i], mb[i], 1
      else
        -- This one is the strictest passed lately: it holds for its
        -- capacity (at least a second) after the last admission.
        iv[i], bu[i] = pi, pb
        local hold = pi * pb
        if hold < 1000000 then hold = 1000000 end
        mi[i], mb[i], mu[i] = pi, pb, now + hold
      end
      q[i] = ''
    end
    co[i] = a[b + 2]
    dues[i] = 0
  end
  local code, dim, due = 0, 0, now
  for i = 1, n do
    if co[i] > bu[i] then
      code, dim = 2, i - 1
      break
    end
    local d = now
    if co[i] > 0 then
      -- From now, so that sums stay small and exact.
      local e = tat[i] - now
      if e < 0 then e = 0 end
      e = e + (co[i] - bu[i]) * iv[i]
      if e > 0 then d = now + e end
    end
    dues[i] = d - now
    if d > due then
      due = d
      dim = i - 1
    end
  end
  local wait = 0
  if code == 0 then
    wait = due - now
    if wait > max_wait then
      code = 1
    else
      dim = 0
      local written, keep = false, s[1]
      for i = 1, n do
        if co[i] > 0 then
          local x = tat[i]
          if x < due then x = due end
          x = x + co[i] * iv[i]
          if x > far then x = far end
          tat[i] = x
          s[5 * i] = x
          written = true
        end
        if tat[i] > keep then keep = tat[i] end
      end
      if written then
        if own then
          if s[3] > keep then keep = s[3] end
        elseif s[3] ~= 0 then
          -- Own limits that ran out are dropped.
          s[3] = 0
          for i = 1, s[4] do
            local o = 5 * i
            s[o + 1], s[o + 2], s[o + 3], s[o + 4] = 0, 0, 0, ''
          end
        end
        for i = n + 1, s[4] do
          if s[5 * i] > keep then keep = s[5 * i] end
        end
        local m = s[4]
        tb = 4 + 5 * m
        for i = 1, m do
          local o = tb + 3 * i
          -- Not kept longer for it: a key that is full again carries no
          -- spend, and Redis drops it (and the record) as before.
          s[o - 2], s[o - 1], s[o] = mi[i], mb[i], mu[i]
        end
        call('SET', key, pack(unpack(s, 1, 4 + 8 * m)), 'PXAT', pxat(keep))
      end
    end
  end
  r[w + 1], r[w + 2], r[w + 3], r[w + 4], r[w + 5] = code, dim, wait, now, s[2]
  r[w + 6], r[w + 7], r[w + 8] = s[1], fresh, stricter
  w = w + 8
  for i = 1, n do
    r[w + 1], r[w + 2], r[w + 3], r[w + 4] = tat[i], dues[i], iv[i], q[i]
    w = w + 4
  end
end

if #KEYS > 1 then pxats = {} end
for d = 1, #KEYS do
  local start = w
  local ok, err = pcall(decide, KEYS[d], ARGV[d])
  if not ok then
    r[start + 1], r[start + 2] = 3, tostring(type(err) == 'table' and err.err or err)
    w = start + 2
  end
end
return pack(unpack(r, 1, w))
