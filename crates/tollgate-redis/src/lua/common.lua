-- tollgate: what every script shares (put before each of them).
-- A key's pause extensions, as its state says at `now`: none once it
-- carries nothing (no own limits in force, its pause over, every
-- dimension full), as for a key that is not there.
local function held_of(s, now)
  local held = s[2]
  if held > 0 and s[3] <= now and s[1] <= now then
    for i = 1, s[4] do
      if s[5 * i] > now then return held end
    end
    return 0
  end
  return held
end
