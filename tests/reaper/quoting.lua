-- Quote argument lists with the actions' command_line and split them again the way REAPER
-- does, writing JSON: per case the command line and argv it splits into, or the refusal.
-- usage: lua5.4 quoting.lua CORE.lua CASES.lua OUT.json
--   CASES.lua returns a list of {os = "...", argv = {...}}.

local here = arg[0]:match("^(.*[/\\])") or "./"
local Fake = dofile(here .. "fake_reaper.lua")
local core = dofile(arg[1])
local results = {}
for i, case in ipairs(dofile(arg[2])) do
  local ok, cmd = pcall(core.command_line, case.argv, case.os)
  if ok then
    local split = case.os:match("^Win") and Fake.split_windows or Fake.split_unix
    results[i] = { cmd = cmd, argv = split(cmd) }
  else
    results[i] = { refused = type(cmd) == "table" and cmd.message or tostring(cmd) }
  end
end
local out = assert(io.open(arg[3], "wb"))
out:write(Fake.to_json(results))
out:close()
