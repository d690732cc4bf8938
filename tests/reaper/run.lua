-- Run one clapsep action against the fake REAPER and write what happened as JSON.
-- usage: lua5.4 run.lua SCENARIO.lua ACTION.lua OUT.json
--   SCENARIO.lua returns the scenario table (see tests/test_reaper.py).

local here = arg[0]:match("^(.*[/\\])") or "./"
local Fake = dofile(here .. "fake_reaper.lua")
local scenario = dofile(arg[1])

local reaper_table, state, run_deferred, snapshot = Fake.new(scenario)
reaper = reaper_table

local ok, err = xpcall(dofile, debug.traceback, arg[2])
if ok then ok, err = xpcall(run_deferred, debug.traceback, 0.05, scenario.time_limit or 120) end

local out = assert(io.open(arg[3], "wb"))
out:write(Fake.to_json({
  tracks = snapshot(), messages = state.messages, execs = state.execs, undo = state.undo,
  changed_outside_undo = state.changed_outside_undo, calls = state.calls, asked = state.asked or false,
  refresh_prevented = state.refresh_prevented, timed_out = state.timed_out, script_error = (not ok) and err or false,
}))
out:close()
