-- tollgate: one key as it stands, writing nothing.
-- KEYS[1]: the key's state; KEYS[2]: its own limits (see decide.lua).
-- ARGV: n. Replies now, pause end, pause extensions, then per dimension
-- its TAT and its own limit's text ('' for none).
local function fmt(x) return string.format('%.0f', x) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = tonumber(ARGV[1])
local sf, lf = {'u', 'h'}, {}
for i = 1, n do
  sf[#sf + 1] = 't' .. i
  lf[#lf + 1] = 'q' .. i
end
local s = redis.call('HMGET', KEYS[1], unpack(sf))
local l = redis.call('HMGET', KEYS[2], unpack(lf))
local r = {fmt(now), fmt(tonumber(s[1]) or 0), fmt(tonumber(s[2]) or 0)}
for i = 1, n do
  r[#r + 1] = fmt(tonumber(s[2 + i]) or 0)
  r[#r + 1] = l[i] or ''
end
return r
