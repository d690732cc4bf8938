-- clapsep for REAPER: the code behind every "clapsep - ..." action.
--
-- `clapsep reaper install` copies this file into REAPER's Scripts/clapsep/ folder next to one
-- small action script per preset; each action calls run(config) with
--   config.command  the argv that starts clapsep, e.g. {"/path/to/python", "-m", "clapsep_cli"}
--   config.preset   a preset name, or nil to ask the user to describe the sound
--   config.label    what the preset is called (the new track's name)
--
-- run() reads the selected items (clipped to the time selection), writes a job file (JSON,
-- UTF-8) and starts `clapsep reaper run JOB` without waiting. Only the clapsep command and the
-- job's path appear on the command line; sources and queries travel in the file. A deferred
-- poll waits for the result file clapsep writes next to the job (a Lua table: state "running",
-- then "done") and inserts the stems on new tracks in one undo block.

local M = {}

-- Seconds clapsep may take to report that it is running before the action gives up.
M.START_LIMIT = 180
-- Tolerance, in seconds of source, for windows that end exactly at the source's edges.
local EPS = 1e-7

local Refusal = {}

-- Stop the action with a message for the user.
local function refuse(message)
  error(setmetatable({ message = message }, Refusal), 0)
end

local function show(message)
  reaper.ShowMessageBox(message, "clapsep", 0)
end

-- Call fn(...): a refusal becomes a message box; any other error (a bug) goes on to REAPER.
local function guarded(fn, ...)
  local ok, err = xpcall(fn, function(e)
    if getmetatable(e) == Refusal then return e end
    return debug.traceback(tostring(e), 2)
  end, ...)
  if ok then return end
  if getmetatable(err) == Refusal then show(err.message) else error(err, 0) end
end

-- JSON text of a string, number, boolean or table (a table with [1] is an array).
local function json(value)
  local kind = type(value)
  if kind == "string" then
    return '"' .. value:gsub('[%c"\\]', function(c)
      if c == '"' or c == "\\" then return "\\" .. c end
      return string.format("\\u%04x", c:byte())
    end) .. '"'
  elseif kind == "number" then
    return string.format("%.17g", value)
  elseif kind == "boolean" then
    return tostring(value)
  elseif kind == "table" and value[1] ~= nil then
    local parts = {}
    for i, v in ipairs(value) do parts[i] = json(v) end
    return "[" .. table.concat(parts, ",") .. "]"
  elseif kind == "table" then
    local keys = {}
    for k in pairs(value) do keys[#keys + 1] = k end
    table.sort(keys)
    local parts = {}
    for i, k in ipairs(keys) do parts[i] = json(k) .. ":" .. json(value[k]) end
    return "{" .. table.concat(parts, ",") .. "}"
  end
  error("cannot write a " .. kind .. " as JSON")
end

-- One argument quoted so that ExecProcess hands it over unchanged, or nil and why not.
-- Windows: CreateProcess's parsing (backslashes are literal except before a double quote, and
-- a path cannot contain one). macOS/Linux: REAPER splits at spaces and honours "...", '...' and
-- `...` without escapes, so the argument is wrapped in a quote character it does not contain.
function M.quote_arg(arg, os_name)
  if os_name:match("^Win") then
    if arg:find('"', 1, true) then return nil, "contains a double quote" end
    return '"' .. arg .. arg:match("\\*$") .. '"'
  end
  for _, q in ipairs({ '"', "'", "`" }) do
    if not arg:find(q, 1, true) then return q .. arg .. q end
  end
  return nil, "contains all three quote characters"
end

-- The command line that runs argv on this OS.
function M.command_line(argv, os_name)
  local parts = {}
  for i, arg in ipairs(argv) do
    local quoted, why = M.quote_arg(arg, os_name)
    if not quoted then refuse("cannot pass this path to clapsep (it " .. why .. "):\n" .. arg) end
    parts[i] = quoted
  end
  return table.concat(parts, " ")
end

local function basename(path)
  return path:match("[^/\\]*$")
end

-- The part of an item to extract: timeline start t0, source window [s0, s1) in seconds, or nil
-- if the item lies outside the time selection; refuses a looped item that repeats its source.
-- A take at playrate r shows `length` seconds of timeline covering length * r seconds of
-- source from its start offset; the parts before and after the source are silence, dropped.
local function window(it, sel_start, sel_end)
  local t0, t1 = it.position, it.position + it.length
  if sel_start then t0, t1 = math.max(t0, sel_start), math.min(t1, sel_end) end
  if t1 <= t0 then return nil end
  local r = it.playrate
  local s0 = it.startoffs + (t0 - it.position) * r
  local s1 = s0 + (t1 - t0) * r
  if it.loop and (s0 < -EPS or s1 > it.source_length + EPS) then
    refuse(it.name .. " loops its source; turn off Item properties > Loop source, or trim it to one pass")
  end
  if s0 < 0 then t0, s0 = t0 - s0 / r, 0 end
  if s1 > it.source_length then s1 = it.source_length end
  if s1 - s0 <= EPS then return nil end
  return { t0 = t0, s0 = s0, s1 = s1 }
end

-- What an item plays and where, or a refusal naming the item.
local function read_item(item)
  local position = reaper.GetMediaItemInfo_Value(item, "D_POSITION")
  local name = string.format("The item at %.3f s", position)
  local take = reaper.GetActiveTake(item)
  if not take then refuse(name .. " is empty") end
  local source = reaper.GetMediaItemTake_Source(take)
  local kind = reaper.GetMediaSourceType(source)
  local file = reaper.GetMediaSourceFileName(source)
  if kind == "MIDI" or file == "" then refuse(name .. " has no audio file (MIDI?)") end
  name = string.format("%s (%s)", name, basename(file))
  if kind == "SECTION" then
    refuse(name .. " is reversed or a section of its source; glue it first (Item > Glue items)")
  end
  if reaper.GetTakeNumStretchMarkers(take) > 0 then
    refuse(name .. " has stretch markers; glue it first (Item > Glue items)")
  end
  local source_length, in_beats = reaper.GetMediaSourceLength(source)
  if in_beats then refuse(name .. " has a beat-based source") end
  return {
    name = name, file = file, position = position, source_length = source_length,
    length = reaper.GetMediaItemInfo_Value(item, "D_LENGTH"),
    loop = reaper.GetMediaItemInfo_Value(item, "B_LOOPSRC") ~= 0,
    track = reaper.GetMediaItem_Track(item),
    startoffs = reaper.GetMediaItemTakeInfo_Value(take, "D_STARTOFFS"),
    playrate = reaper.GetMediaItemTakeInfo_Value(take, "D_PLAYRATE"),
    pitch = reaper.GetMediaItemTakeInfo_Value(take, "D_PITCH"),
    ppitch = reaper.GetMediaItemTakeInfo_Value(take, "B_PPITCH"),
  }
end

-- The selected items that have something under the time selection, with their windows.
local function selected_parts()
  local sel_start, sel_end = reaper.GetSet_LoopTimeRange(false, false, 0, 0, false)
  if sel_end <= sel_start then sel_start, sel_end = nil, nil end
  local count = reaper.CountSelectedMediaItems(0)
  if count == 0 then refuse("Select one or more audio items first.") end
  local parts = {}
  for i = 0, count - 1 do
    local it = read_item(reaper.GetSelectedMediaItem(0, i))
    local w = window(it, sel_start, sel_end)
    if w then
      it.t0, it.s0, it.s1 = w.t0, w.s0, w.s1
      parts[#parts + 1] = it
    end
  end
  if #parts == 0 then refuse("None of the selected items has audio inside the time selection.") end
  return parts
end

local function ask_query()
  local ok, text = reaper.GetUserInputs("clapsep: extract a sound", 1,
    "Describe the sound:,separator=\n,extrawidth=320", "")
  if not ok or not text:match("%S") then return nil end
  return text
end

local function write_file(path, text)
  local f, err = io.open(path, "wb")
  if not f then refuse("cannot write " .. path .. ": " .. tostring(err)) end
  f:write(text)
  f:close()
end

-- The result table clapsep wrote (a Lua table literal, loaded without access to anything),
-- or nil while there is none yet.
local function read_result(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local text = f:read("a")
  f:close()
  local chunk = load(text, "=clapsep result", "t", {})
  if not chunk then return nil end
  local ok, result = pcall(chunk)
  if ok and type(result) == "table" then return result end
  return nil
end

-- A new track directly below `track` (at the end if that track is gone), named `label`.
local function new_track(project, track, label)
  local index = reaper.CountTracks(0)
  if reaper.ValidatePtr2(project, track, "MediaTrack*") then
    index = math.floor(reaper.GetMediaTrackInfo_Value(track, "IP_TRACKNUMBER"))
  end
  reaper.InsertTrackAtIndex(index, true)
  local created = reaper.GetTrack(0, index)
  reaper.GetSetMediaTrackInfo_String(created, "P_NAME", label, true)
  return created
end

-- The stem as an item lined up sample for sample with the part of the source it came from:
-- its first frame is source frame `offset`, so it starts (offset / rate - s0) / playrate after
-- t0, plays at the source take's rate and pitch, and is as long as the stem plays.
local function insert_stem(track, part, stem)
  local item = reaper.AddMediaItemToTrack(track)
  local take = reaper.AddTakeToMediaItem(item)
  reaper.SetMediaItemTake_Source(take, reaper.PCM_Source_CreateFromFile(stem.target))
  reaper.SetMediaItemInfo_Value(item, "D_POSITION", part.t0 + (stem.offset / stem.rate - part.s0) / part.playrate)
  reaper.SetMediaItemInfo_Value(item, "D_LENGTH", stem.frames / stem.rate / part.playrate)
  reaper.SetMediaItemInfo_Value(item, "B_LOOPSRC", 0)
  reaper.SetMediaItemTakeInfo_Value(take, "D_STARTOFFS", 0)
  reaper.SetMediaItemTakeInfo_Value(take, "D_PLAYRATE", part.playrate)
  reaper.SetMediaItemTakeInfo_Value(take, "D_PITCH", part.pitch)
  reaper.SetMediaItemTakeInfo_Value(take, "B_PPITCH", part.ppitch)
  reaper.GetSetMediaItemTakeInfo_String(take, "P_NAME", basename(stem.target), true)
end

-- Insert every stem clapsep wrote, one new track per source track, in one undo block;
-- returns the lines describing the parts that failed.
local function insert_stems(job, stems)
  local failures, tracks, order = {}, {}, {}
  for i, part in ipairs(job.parts) do
    local stem = stems[i] or { error = "no result" }
    if stem.status == "ok" then
      if not tracks[part.track] then order[#order + 1] = part.track end
      tracks[part.track] = tracks[part.track] or {}
      table.insert(tracks[part.track], { part = part, stem = stem })
    else
      failures[#failures + 1] = part.name .. ": " .. tostring(stem.error)
    end
  end
  if #order == 0 then return failures end
  reaper.Undo_BeginBlock()
  reaper.PreventUIRefresh(1)
  for _, source_track in ipairs(order) do
    local track = new_track(job.project, source_track, job.label)
    for _, entry in ipairs(tracks[source_track]) do insert_stem(track, entry.part, entry.stem) end
  end
  reaper.PreventUIRefresh(-1)
  reaper.UpdateArrange()
  reaper.Undo_EndBlock("clapsep: extract " .. job.label, -1)
  return failures
end

local function cleanup(job)
  os.remove(job.path)
  os.remove(job.result)
end

local function finish(job, result)
  cleanup(job)
  if result.error then refuse("clapsep failed: " .. tostring(result.error)) end
  if reaper.EnumProjects(-1) ~= job.project then
    refuse("The project changed while clapsep ran; the stems are in " .. job.out_dir)
  end
  local failures = insert_stems(job, result.items or {})
  if #failures > 0 then
    refuse(string.format("clapsep could not extract %d of %d items:\n\n%s", #failures, #job.parts,
      table.concat(failures, "\n")))
  end
end

-- One deferred step: finish when clapsep is done, else look again on REAPER's next cycle.
local function poll(job)
  local result = read_result(job.result)
  if result and result.state == "done" then return finish(job, result) end
  if result then job.started = true end
  if not job.started and reaper.time_precise() - job.launched > M.START_LIMIT then
    cleanup(job)
    refuse(string.format("clapsep did not start within %d s. Command:\n%s\n\nRun it in a terminal to see why, "
      .. "or run `clapsep reaper install` again.", M.START_LIMIT, job.command))
  end
  reaper.defer(function() guarded(poll, job) end)
end

-- A fresh job file name in clapsep's folder under REAPER's resource path.
local function job_path()
  local folder = reaper.GetResourcePath() .. "/Data/clapsep"
  reaper.RecursiveCreateDirectory(folder, 0)
  while true do
    local path = string.format("%s/job-%d-%09d.json", folder, os.time(), math.random(0, 999999999))
    if not reaper.file_exists(path) then return path end
  end
end

local function start(config)
  local query = config.preset and { preset = config.preset } or nil
  local label = config.label
  local parts = selected_parts()
  if not query then
    local text = ask_query()
    if not text then return end
    query, label = { text = text }, text
  end
  if not reaper.file_exists(config.command[1]) then
    refuse("clapsep is not at " .. config.command[1] .. ".\nRun `clapsep reaper install` again.")
  end
  local out_dir = reaper.GetProjectPath()
  if out_dir == "" then out_dir = reaper.GetResourcePath() .. "/Data/clapsep/stems" end
  local path = job_path()
  local items = {}
  for i, part in ipairs(parts) do items[i] = { source = part.file, start = part.s0, ["end"] = part.s1 } end
  write_file(path, json({ clapsep_reaper_job = 1, query = query, out_dir = out_dir, items = items }))
  local argv = {}
  for i, arg in ipairs(config.command) do argv[i] = arg end
  for _, arg in ipairs({ "reaper", "run", path }) do argv[#argv + 1] = arg end
  local os_name = reaper.GetOS()
  local job = {
    path = path, result = path:gsub("%.json$", ".result.lua"), parts = parts, label = label,
    out_dir = out_dir, project = reaper.EnumProjects(-1), command = M.command_line(argv, os_name),
  }
  -- Do not wait (-1); on Windows also minimize the console window clapsep opens (-2).
  if reaper.ExecProcess(job.command, os_name:match("^Win") and -2 or -1) == nil then
    cleanup(job)
    refuse("could not start clapsep:\n" .. job.command)
  end
  job.launched = reaper.time_precise()
  reaper.defer(function() guarded(poll, job) end)
end

-- The action: extract config.preset (or an asked-for description) from the selected items.
function M.run(config)
  guarded(start, config)
end

return M
