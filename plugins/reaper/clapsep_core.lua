-- clapsep for REAPER: the code behind every "clapsep - ..." action.
--
-- `clapsep reaper install` copies this file into REAPER's Scripts/clapsep/ folder next to two
-- small action scripts per preset (extract, find); each action calls run(config) with
--   config.kind         "extract" (stems on new tracks) or "find" (regions or markers where the
--                       sound occurs)
--   config.command      the argv that starts clapsep, e.g. {"/abs/python", "-m", "clapsep_cli"}
--   config.preset_file  the preset's file (absolute), or nil to ask the user to describe the sound
--   config.label        what the preset is called (the new track's name)
--   config.store        the model store (absolute), and config.ffmpeg, ffmpeg (absolute) or nil:
--                       a process REAPER starts may not see the user's shell environment
--   config.threshold    (find) the threshold until the user chooses one
--
-- run() reads the selected items (clipped to the time selection), writes a job file (JSON,
-- UTF-8) and starts `clapsep reaper run JOB` without waiting. Only the clapsep command and the
-- job's path appear on the command line; sources and queries travel in the file. Next to the
-- job, clapsep appends a byte to JOB.beat every second while it works, writes JOB.log, and
-- finally renames its result (a Lua table) into place as JOB.result.lua; no file is ever
-- replaced while the action may be reading it. A deferred poll waits for the result (or for
-- the heartbeat to stop), waits for the user to return to the job's project tab, and then, in
-- one undo block, inserts the stems on new tracks or marks the events, where the items were
-- when the action started.

local M = {}

-- Seconds clapsep may take to show its first heartbeat before the action gives up.
M.START_LIMIT = 180
-- Seconds without a heartbeat after which clapsep is taken for dead (killed, crashed, out of memory).
M.SILENCE_LIMIT = 60
-- Tolerance, in seconds of source, for windows that end exactly at the source's edges.
local EPS = 1e-7
-- The section of REAPER's extended state (kept across restarts) where the find actions keep
-- the threshold and the marks ("regions" or "markers") last chosen in "clapsep - find a sound".
M.SETTINGS = "clapsep"

local Refusal = {}

-- Stop the action with a message for the user.
local function refuse(message)
  error(setmetatable({ message = message }, Refusal), 0)
end

local function show(message)
  reaper.ShowMessageBox(message, "clapsep", 0)
end

-- Call fn(...): a refusal becomes a message box; any other error (a bug) is handed to
-- on_bug(traceback) if given, then goes on to REAPER.
local function guarded(fn, on_bug, ...)
  local ok, err = xpcall(fn, function(e)
    if getmetatable(e) == Refusal then return e end
    return debug.traceback(tostring(e), 2)
  end, ...)
  if ok then return end
  if getmetatable(err) == Refusal then return show(err.message) end
  if on_bug then on_bug(err) end
  error(err, 0)
end

-- JSON text of a string, number, boolean or table (a table with [1] is an array; nil fields
-- are left out).
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

-- One argument quoted for ExecProcess, or nil and why not. REAPER does not document how it
-- splits a command line, so an argument is wrapped in double quotes and refused if it holds a
-- character that any likely reading would treat specially: a double quote or a control
-- character anywhere; on Windows a % (cmd.exe expands %VAR%); elsewhere $ ` or \ (a shell
-- expands them inside double quotes). Windows: a trailing run of backslashes is doubled so
-- that it does not escape the closing quote.
function M.quote_arg(arg, os_name)
  local windows = os_name:match("^Win") ~= nil
  local at = arg:find(windows and '[%c"%%]' or '[%c"$`\\]')
  if at then
    local ch = arg:sub(at, at)
    return nil, ch:match("%c") and "contains a control character" or "contains " .. ch
  end
  if windows then return '"' .. arg .. arg:match("\\*$") .. '"' end
  return '"' .. arg .. '"'
end

-- The command line that runs argv on this OS.
function M.command_line(argv, os_name)
  local parts = {}
  for i, arg in ipairs(argv) do
    local quoted, why = M.quote_arg(arg, os_name)
    if not quoted then refuse("cannot pass this path to clapsep safely (it " .. why .. "):\n" .. arg) end
    parts[i] = quoted
  end
  return table.concat(parts, " ")
end

local function basename(path)
  return path:match("[^/\\]*$")
end

-- The part of an item to extract: timeline start t0, source window [s0, s1) in seconds and
-- whether it runs to the source's end, or nil if the item lies outside the time selection;
-- refuses a looped item that repeats its source. A take at playrate r shows `length` seconds
-- of timeline covering length * r seconds of source from its start offset; the parts before
-- and after the source are silence, dropped.
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
  return { t0 = t0, s0 = s0, s1 = s1, to_end = s1 >= it.source_length - EPS }
end

-- "The item at X s (file)".
local function item_name(position, file)
  local name = string.format("The item at %.3f s", position)
  if file and file ~= "" then name = string.format("%s (%s)", name, basename(file)) end
  return name
end

-- What an item plays and where, or a refusal naming the item. The source's kind is checked
-- before its file name: a reversed or section take has a SECTION source, whose own file name
-- is empty (its parent holds the file).
local function read_item(item)
  local position = reaper.GetMediaItemInfo_Value(item, "D_POSITION")
  local take = reaper.GetActiveTake(item)
  if not take then refuse(item_name(position) .. " is empty") end
  if reaper.TakeIsMIDI(take) then refuse(item_name(position) .. " is MIDI, not audio") end
  local source = reaper.GetMediaItemTake_Source(take)
  if not source then refuse(item_name(position) .. " has no source") end
  if reaper.PCM_Source_GetSectionInfo(source) or reaper.GetMediaSourceType(source, "") == "SECTION" then
    local parent = reaper.GetMediaSourceParent(source)
    refuse(item_name(position, parent and reaper.GetMediaSourceFileName(parent, ""))
      .. " is reversed or a section of its source; glue it first (Item > Glue items)")
  end
  local file = reaper.GetMediaSourceFileName(source, "")
  if file == "" then refuse(item_name(position) .. " has no audio file") end
  local name = item_name(position, file)
  if reaper.GetTakeNumStretchMarkers(take) > 0 then
    refuse(name .. " has stretch markers; glue it first (Item > Glue items)")
  end
  local source_length, in_beats = reaper.GetMediaSourceLength(source)
  if in_beats then refuse(name .. " has a beat-based source") end
  local playback = {}
  for _, key in ipairs({ "D_PLAYRATE", "D_PITCH", "B_PPITCH", "I_PITCHMODE", "I_CHANMODE", "D_VOL", "D_PAN" }) do
    playback[key] = reaper.GetMediaItemTakeInfo_Value(take, key)
  end
  return {
    name = name, file = file, position = position, source_length = source_length,
    length = reaper.GetMediaItemInfo_Value(item, "D_LENGTH"),
    loop = reaper.GetMediaItemInfo_Value(item, "B_LOOPSRC") ~= 0,
    track = reaper.GetMediaItem_Track(item),
    startoffs = reaper.GetMediaItemTakeInfo_Value(take, "D_STARTOFFS"),
    playrate = playback.D_PLAYRATE, playback = playback,
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
      it.t0, it.s0, it.s1, it.to_end = w.t0, w.s0, w.s1, w.to_end
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

-- A find's threshold (a number above 0, at most 1) and marks ("regions" or "markers") from
-- their text, or a refusal.
local function checked_settings(threshold_text, marks_text)
  local threshold = tonumber(threshold_text)
  if not threshold or threshold <= 0 or threshold > 1 then
    refuse("The threshold must be a number above 0 and at most 1, not \"" .. threshold_text .. "\".")
  end
  local marks = marks_text:lower():match("^%s*(%a+)%s*$")
  if marks ~= "regions" and marks ~= "markers" then
    refuse("Mark the sound with \"regions\" or \"markers\", not \"" .. marks_text .. "\".")
  end
  return threshold, marks
end

-- The threshold and marks last chosen (regions and the installed default until then).
local function find_settings(config)
  local threshold = reaper.GetExtState(M.SETTINGS, "find_threshold")
  local marks = reaper.GetExtState(M.SETTINGS, "find_marks")
  return checked_settings(threshold ~= "" and threshold or string.format("%g", config.threshold),
    marks ~= "" and marks or "regions")
end

-- Ask for a description, a threshold and the marks, offering the last choices, and remember
-- the new ones; nil if the user cancelled or gave no description.
local function ask_find(threshold, marks)
  local ok, answer = reaper.GetUserInputs("clapsep: find a sound", 3,
    "Describe the sound:,Threshold (0 to 1):,Mark with (regions or markers):,separator=\n,extrawidth=320",
    string.format("\n%g\n%s", threshold, marks))
  if not ok then return nil end
  local text, threshold_text, marks_text = answer:match("^(.-)\n(.-)\n(.*)$")
  if not text:match("%S") then return nil end
  threshold, marks = checked_settings(threshold_text, marks_text)
  reaper.SetExtState(M.SETTINGS, "find_threshold", string.format("%g", threshold), true)
  reaper.SetExtState(M.SETTINGS, "find_marks", marks, true)
  return text, threshold, marks
end

local function write_file(path, text)
  local f, err = io.open(path, "wb")
  if not f then refuse("cannot write " .. path .. ": " .. tostring(err)) end
  f:write(text)
  f:close()
end

-- Size of a file in bytes, or nil if it cannot be opened.
local function file_size(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local size = f:seek("end")
  f:close()
  return size
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

-- Add a line from the REAPER side to the job's log, which a user sends with a report.
local function note_in_log(job, text)
  local f = io.open(job.log, "ab")
  if not f then return end
  f:write(string.format("[REAPER action, REAPER %s on %s] %s\n", reaper.GetAppVersion(), job.os_name, text))
  f:close()
end

local function remove(paths)
  for _, path in ipairs(paths) do os.remove(path) end
end

-- The job is over: remove its files, keeping the job file and the log when something failed.
local function close_job(job, failed)
  job.closed = true
  remove({ job.result, job.beat })
  if not failed then remove({ job.path, job.log }) end
end

-- Stop the job with a message for the user; the job file and the log stay for a report.
local function fail(job, message)
  note_in_log(job, message)
  close_job(job, true)
  refuse(string.format("%s\n\nDetails are in the log %s (send it with the job file %s when you report "
    .. "a problem).", message, job.log, job.path))
end

-- Whether the job's project is still open ("gone" if not) and whether it is the active tab
-- ("here") or another one ("elsewhere"). A project is identified by its pointer and its file
-- name, since a pointer can be reused by a project opened after it was closed.
local function project_state(job)
  if not reaper.ValidatePtr(job.project, "ReaProject*") then return "gone" end
  local i = 0
  while true do
    local project, file = reaper.EnumProjects(i)
    if not project then return "gone" end
    if project == job.project then
      if job.project_file ~= "" and file ~= job.project_file then return "gone" end
      break
    end
    i = i + 1
  end
  return reaper.EnumProjects(-1) == job.project and "here" or "elsewhere"
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
-- t0, is as long as the stem plays, and plays as its source take does (rate, pitch and pitch
-- mode, channel mode, volume with polarity, pan).
local function insert_stem(track, entry)
  local part, stem = entry.part, entry.stem
  local item = reaper.AddMediaItemToTrack(track)
  local take = reaper.AddTakeToMediaItem(item)
  reaper.SetMediaItemTake_Source(take, entry.source)
  entry.attached = true
  reaper.SetMediaItemInfo_Value(item, "D_POSITION", part.t0 + (stem.offset / stem.rate - part.s0) / part.playrate)
  reaper.SetMediaItemInfo_Value(item, "D_LENGTH", stem.frames / stem.rate / part.playrate)
  reaper.SetMediaItemInfo_Value(item, "B_LOOPSRC", 0)
  reaper.SetMediaItemTakeInfo_Value(take, "D_STARTOFFS", 0)
  for key, value in pairs(part.playback) do reaper.SetMediaItemTakeInfo_Value(take, key, value) end
  reaper.GetSetMediaItemTakeInfo_String(take, "P_NAME", basename(stem.target), true)
end

-- Calls ok(part, entry) for each part whose result entry clapsep marks "ok" (ok may return
-- why it could not use it); returns the lines naming the parts that failed.
local function use_results(job, entries, ok)
  local failures = {}
  for i, part in ipairs(job.parts) do
    local entry = entries[i] or { error = "no result" }
    local problem = tostring(entry.error)
    if entry.status == "ok" then problem = ok(part, entry) end
    if problem then failures[#failures + 1] = part.name .. ": " .. problem end
  end
  return failures
end

-- Run change() in one undo block named `description`, with the UI refresh held; the refresh
-- count and the undo block are restored even if change raises. Returns xpcall's outcome.
local function in_undo_block(description, change)
  reaper.Undo_BeginBlock()
  reaper.PreventUIRefresh(1)
  local ok, err = xpcall(change, debug.traceback)
  reaper.PreventUIRefresh(-1)
  reaper.UpdateTimeline()
  reaper.Undo_EndBlock(description, -1)
  return ok, err
end

-- Insert every stem clapsep wrote, one new track per source track, in one undo block; returns
-- the lines describing the parts that failed.
local function insert_stems(job, stems)
  local ready = {}
  local failures = use_results(job, stems, function(part, stem)
    local source = reaper.PCM_Source_CreateFromFile(stem.target)
    if not source then return "REAPER cannot open the stem " .. stem.target end
    ready[#ready + 1] = { part = part, stem = stem, source = source }
  end)
  if #ready == 0 then return failures end
  local ok, err = in_undo_block("clapsep: extract " .. job.label, function()
    local tracks = {}
    for _, entry in ipairs(ready) do
      local part = entry.part
      tracks[part.track] = tracks[part.track] or new_track(job.project, part.track, job.label)
      insert_stem(tracks[part.track], entry)
    end
  end)
  if not ok then
    for _, entry in ipairs(ready) do
      if not entry.attached then reaper.PCM_Source_Destroy(entry.source) end
    end
    error(err, 0)
  end
  return failures
end

-- An event's span on the timeline, clipped to the part's window, or nil if it lies outside.
-- Event times are seconds of the source's clock: the part plays source second s at
-- t0 + (s - s0) / playrate.
local function event_span(part, event)
  local s0, s1 = math.max(event.start, part.s0), math.min(event["end"], part.s1)
  if s1 <= s0 then return nil end
  return part.t0 + (s0 - part.s0) / part.playrate, part.t0 + (s1 - part.s0) / part.playrate
end

-- Mark every event clapsep found, with a region over it or a marker at its start (job.marks),
-- named "<tag> <confidence>", in one undo block; returns the lines describing the parts that
-- failed, and a note when there is nothing to mark.
local function mark_events(job, results)
  local spans = {}
  local failures = use_results(job, results, function(part, result)
    for _, event in ipairs(result.events) do
      local from, to = event_span(part, event)
      if from then
        spans[#spans + 1] = { from = from, to = to, name = string.format("%s %.2f", event.label, event.confidence) }
      end
    end
  end)
  if #spans == 0 then
    return failures, string.format("clapsep found no %s in the selected items (threshold %g).", job.label,
      job.threshold)
  end
  local regions = job.marks == "regions"
  local ok, err = in_undo_block("clapsep: find " .. job.label, function()
    for _, span in ipairs(spans) do
      if reaper.AddProjectMarker2(0, regions, span.from, regions and span.to or 0, span.name, -1, 0) < 0 then
        error(string.format("REAPER could not add a %s at %.3f s", regions and "region" or "marker", span.from))
      end
    end
  end)
  if not ok then error(err, 0) end
  return failures
end

local function finish(job, result)
  if result.error then fail(job, "clapsep failed: " .. tostring(result.error)) end
  local failures, note = job.land(job, result.items or {})
  if #failures > 0 then
    fail(job, string.format("clapsep could not %s %d of %d items:\n\n%s", job.verb, #failures, #job.parts,
      table.concat(failures, "\n")))
  end
  close_job(job, false)
  if note then show(note) end
end

local poll

local function again(job)
  reaper.defer(function() guarded(poll, job.on_bug, job) end)
end

-- One deferred step: wait for clapsep's result while its heartbeat goes on, then for the
-- job's project to be the active tab, then insert.
poll = function(job)
  local now = reaper.time_precise()
  if not job.result_data then
    job.result_data = read_result(job.result)
    if not job.result_data then
      local size = file_size(job.beat)
      if size and size ~= job.beat_size then job.beat_size, job.beat_at = size, now end
      if job.beat_at and now - job.beat_at > M.SILENCE_LIMIT then
        fail(job, string.format("clapsep stopped working (no sign of life for %d s): it may have run out of "
          .. "memory, crashed or been stopped.", M.SILENCE_LIMIT))
      elseif not job.beat_at and now - job.launched > M.START_LIMIT then
        fail(job, string.format("clapsep did not start within %d s. Command:\n%s\n\nRun it in a terminal to "
          .. "see why, or run `clapsep reaper install` again.", M.START_LIMIT, job.command))
      end
      return again(job)
    end
  end
  local where = project_state(job)
  if where == "gone" then
    fail(job, "The project was closed while clapsep ran; " .. job.gone_note)
  elseif where == "elsewhere" then
    return again(job)  -- the user is in another project tab: insert when they come back
  end
  finish(job, job.result_data)
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

-- What a job asks for and how its results land: the query, the label (the preset's name or
-- the description), the job file's own fields, the verb and function that land the results,
-- and what the user is told if the project closes first; nil if the user cancelled.
local function extraction(config, query)
  local label = config.label
  if not query then
    local text = ask_query()
    if not text then return nil end
    query, label = { text = text }, text
  end
  local out_dir = reaper.GetProjectPath("")
  if out_dir == "" then out_dir = reaper.GetResourcePath() .. "/Data/clapsep/stems" end
  return { query = query, label = label, fields = { kind = "extract", out_dir = out_dir }, verb = "extract",
    land = insert_stems, gone_note = "the stems are in " .. out_dir }
end

local function search(config, query)
  local label = config.label
  local threshold, marks = find_settings(config)
  if not query then
    local text
    text, threshold, marks = ask_find(threshold, marks)
    if not text then return nil end
    query, label = { text = text }, text
  end
  return { query = query, label = label, fields = { kind = "find", threshold = threshold }, verb = "search",
    land = mark_events, gone_note = "nothing was marked.", threshold = threshold, marks = marks }
end

local function start(config)
  local parts = selected_parts()
  local request = (config.kind == "find" and search or extraction)(config,
    config.preset_file and { preset_file = config.preset_file } or nil)
  if not request then return end
  if not reaper.file_exists(config.command[1]) then
    refuse("clapsep is not at " .. config.command[1] .. ".\nRun `clapsep reaper install` again.")
  end
  local path = job_path()
  local base = path:gsub("%.json$", "")
  local argv = {}
  for i, arg in ipairs(config.command) do argv[i] = arg end
  for _, arg in ipairs({ "reaper", "run", path }) do argv[#argv + 1] = arg end
  local os_name = reaper.GetOS()
  local project, project_file = reaper.EnumProjects(-1)
  local job = {
    path = path, result = base .. ".result.lua", beat = base .. ".beat", log = base .. ".log",
    parts = parts, project = project, project_file = project_file or "",
    os_name = os_name, command = M.command_line(argv, os_name),
  }
  for _, key in ipairs({ "label", "verb", "land", "gone_note", "threshold", "marks" }) do job[key] = request[key] end
  job.on_bug = function(traceback)
    note_in_log(job, "internal error: " .. traceback)
    close_job(job, true)
  end
  local items = {}
  for i, part in ipairs(parts) do
    items[i] = { source = part.file, start = part.s0, ["end"] = not part.to_end and part.s1 or nil }
  end
  local fields = { clapsep_reaper_job = 2, query = request.query, items = items, store = config.store,
    ffmpeg = config.ffmpeg }
  for key, value in pairs(request.fields) do fields[key] = value end
  write_file(path, json(fields))
  -- Stopped by the user (REAPER's "script already running" dialog, or the running-scripts list)
  -- or ended by an error: removing the job file tells clapsep to stop and clean up its stems.
  reaper.atexit(function()
    if not job.closed then
      job.closed = true
      remove({ job.path, job.result, job.beat, job.log })
    end
  end)
  -- Do not wait (-1); on Windows also minimize the console window clapsep opens (-2).
  if reaper.ExecProcess(job.command, os_name:match("^Win") and -2 or -1) == nil then
    close_job(job, false)
    refuse("could not start clapsep:\n" .. job.command)
  end
  job.launched = reaper.time_precise()
  again(job)
end

-- The action: extract or find config.preset_file (or an asked-for description) in the selected items.
function M.run(config)
  guarded(start, nil, config)
end

return M
