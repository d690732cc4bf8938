-- Quote argument lists with the actions' command_line and split them again as REAPER might,
-- writing JSON: per case the command line and the argv each reading gives (Windows: the C
-- runtime's rules; elsewhere a quote-aware splitter and /bin/sh), or the refusal.
-- usage: lua5.4 quoting.lua CORE.lua CASES.lua OUT.json
--   CASES.lua returns a list of {os = "...", argv = {...}}.

local here = arg[0]:match("^(.*[/\\])") or "./"
local Fake = dofile(here .. "fake_reaper.lua")
local core = dofile(arg[1])
local results = {}
for i, case in ipairs(dofile(arg[2])) do
  local ok, cmd = pcall(core.command_line, case.argv, case.os)
  if not ok then
    results[i] = { refused = type(cmd) == "table" and cmd.message or tostring(cmd) }
  elseif case.os:match("^Win") then
    results[i] = { cmd = cmd, readings = { Fake.split_windows(cmd) } }
  else
    results[i] = { cmd = cmd, readings = { Fake.split_unix(cmd), Fake.split_sh(cmd) } }
  end
end
local out = assert(io.open(arg[3], "wb"))
out:write(Fake.to_json(results))
out:close()
