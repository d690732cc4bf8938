-- Run one clapsep action against the fake REAPER and write what happened as JSON.
-- usage: lua5.4 run.lua SCENARIO.lua ACTION.lua OUT.json
--   SCENARIO.lua returns the scenario table (see tests/test_reaper.py).

local here = arg[0]:match("^(.*[/\\])") or "./"
local Fake = dofile(here .. "fake_reaper.lua")
local scenario = dofile(arg[1])

local fake = Fake.new(scenario)
reaper = fake.reaper

fake.launch(arg[2])
fake.run(0.05, scenario.time_limit or 120)

local state, projects = fake.state, fake.snapshot()
local out = assert(io.open(arg[3], "wb"))
out:write(Fake.to_json({
  tracks = projects.tracks, markers = projects.markers, tabs = projects.tabs, messages = state.messages,
  execs = state.execs, extstate = state.extstate,
  undo = state.undo, changed_outside_undo = state.changed_outside_undo, calls = state.calls, asked = state.asked,
  refresh_prevented = state.refresh_prevented, timed_out = state.timed_out, dialogs = state.dialogs,
  script_errors = state.script_errors, destroyed_sources = state.destroyed_sources, atexit_ran = state.atexit_ran,
}))
out:close()
