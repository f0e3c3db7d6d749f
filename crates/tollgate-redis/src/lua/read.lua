-- tollgate: one key as it stands, writing nothing.
-- KEYS[1]: the key's state (its layout in decide.lua).
-- ARGV: n. Replies now, pause end, pause extensions, then per dimension
-- its TAT and its own limit's text ('' for none).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = tonumber(ARGV[1])
local v = redis.call('GET', KEYS[1])
local s
if v then s = {cmsgpack.unpack(v)} else s = {0, 0, 0, 0} end
local own = s[3] > now
local r = {now, s[1], held_of(s, now)}
for i = 1, n do
  if i <= s[4] then
    r[#r + 1] = s[5 * i]
    r[#r + 1] = own and s[5 * i + 1] > 0 and s[5 * i + 4] or ''
  else
    r[#r + 1] = 0
    r[#r + 1] = ''
  end
end
return r
