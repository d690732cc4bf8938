-- A stand-in for REAPER's `reaper` table, for running the clapsep actions under plain Lua.
--
-- It provides only the functions the actions use (anything else raises an error). Each one
-- follows REAPER's ReaScript documentation (reascripthelp.html), quoted beside it as
-- "v7.27:" (the page REAPER 7.27 generates) and "v6.09:" where REAPER 6 differs; where the
-- documentation says nothing, the comment says what the fake assumes and why. Arguments are
-- checked against the documented signatures, so a call REAPER would reject fails here too.
--
-- Modelled: tracks, items, takes and sources of several project tabs, and each project's
-- markers and regions; REAPER's extended state (GetExtState/SetExtState); SECTION sources (a
-- reversed or section take) whose own file name is empty; nil returns (no active take, a file
-- REAPER cannot open); script instances with defer/atexit, including REAPER's "script already
-- running" dialog (ReaScript task control) when an action is launched again; and child
-- processes started with an empty environment, as a REAPER started from the macOS Dock starts
-- them (launchd's minimal environment), not with the test runner's.

local Fake = {}

-- argv from a command line as a quote-aware splitter would read it: at spaces, honouring "...",
-- '...' and `...` with no escape characters. One plausible reading of REAPER on macOS/Linux,
-- whose ExecProcess documentation does not say how it splits.
function Fake.split_unix(cmd)
  local argv, current, quote = {}, nil, nil
  for ch in cmd:gmatch(".") do
    if quote then
      if ch == quote then quote = nil else current = current .. ch end
    elseif ch == " " then
      if current then argv[#argv + 1], current = current, nil end
    elseif ch == '"' or ch == "'" or ch == "`" then
      quote, current = ch, current or ""
    else
      current = (current or "") .. ch
    end
  end
  assert(not quote, "unterminated quote in " .. cmd)
  if current then argv[#argv + 1] = current end
  return argv
end

local function sh_quote(arg)
  return "'" .. arg:gsub("'", "'\\''") .. "'"
end

-- argv from a command line as /bin/sh reads it (the other plausible reading on macOS/Linux):
-- the real shell expands it and prints each word NUL-terminated.
function Fake.split_sh(cmd)
  local pipe = assert(io.popen("/bin/sh -c " .. sh_quote("printf '%s\\0' " .. cmd)))
  local out = pipe:read("a")
  pipe:close()
  local argv = {}
  for word in out:gmatch("([^%z]*)%z") do argv[#argv + 1] = word end
  return argv
end

-- argv from a command line as a Windows program's C runtime splits it: the program name runs
-- to the next double quote (if quoted) or blank; then 2n backslashes before a quote give n and
-- toggle quoting, 2n+1 give n and a literal quote, other backslashes are literal.
function Fake.split_windows(cmd)
  local argv, i, n = {}, 1, #cmd
  if cmd:sub(1, 1) == '"' then
    local close = assert(cmd:find('"', 2, true), "unterminated program name")
    argv[1], i = cmd:sub(2, close - 1), close + 1
  else
    local stop = cmd:find("[ \t]") or n + 1
    argv[1], i = cmd:sub(1, stop - 1), stop
  end
  local current, quoted = nil, false
  while i <= n do
    local ch = cmd:sub(i, i)
    if ch == "\\" then
      local run = cmd:match("^\\+", i)
      i = i + #run
      if cmd:sub(i, i) == '"' then
        current = (current or "") .. string.rep("\\", #run // 2)
        if #run % 2 == 1 then current, i = current .. '"', i + 1 end
      else
        current = (current or "") .. run
      end
    elseif ch == '"' then
      quoted, current, i = not quoted, current or "", i + 1
    elseif (ch == " " or ch == "\t") and not quoted then
      if current then argv[#argv + 1], current = current, nil end
      i = i + 1
    else
      current, i = (current or "") .. ch, i + 1
    end
  end
  if current then argv[#argv + 1] = current end
  return argv
end

-- JSON text of plain Lua data (a table with [1], or an empty one, is an array).
function Fake.to_json(value)
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
  elseif kind == "nil" then
    return "null"
  elseif #value > 0 or next(value) == nil then
    local parts = {}
    for i, v in ipairs(value) do parts[i] = Fake.to_json(v) end
    return "[" .. table.concat(parts, ",") .. "]"
  end
  local parts = {}
  for k, v in pairs(value) do parts[#parts + 1] = Fake.to_json(tostring(k)) .. ":" .. Fake.to_json(v) end
  return "{" .. table.concat(parts, ",") .. "}"
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local text = f:read("a")
  f:close()
  return text
end

-- A fresh fake for `scenario` (see tests/test_reaper.py for its fields). Returns a table with
-- `reaper` (the API), `state` (what happened), `launch(action)` (run an action script as a new
-- script instance), `run(step, limit)` (REAPER's defer cycles until every instance has ended)
-- and `snapshot()` (the projects as plain tables).
function Fake.new(scenario)
  local state = {
    calls = {}, messages = {}, execs = {}, undo = {}, changed_outside_undo = {}, asked = false,
    refresh_prevented = 0, timed_out = false, dialogs = {}, script_errors = {}, destroyed_sources = 0,
    atexit_ran = 0, extstate = {},
  }
  local records = setmetatable({}, { __mode = "k" })
  local handle_mt = {
    __index = function() error("a REAPER handle is opaque", 2) end,
    __newindex = function() error("a REAPER handle is opaque", 2) end,
  }
  local clock, cycle, undo_depth = 0.0, 0, 0
  local queue, instances, current, exec_cycle = {}, {}, nil, nil
  local launch

  local function handle(kind, record)
    local h = setmetatable({}, handle_mt)
    record.kind, records[h] = kind, record
    return h
  end

  local function get(h, kind)
    local record = records[h]
    if not record or record.kind ~= kind or record.gone then
      error("expected a valid " .. kind .. ", got " .. tostring(h), 3)
    end
    return record
  end

  local function check(ok, message)
    if not ok then error(message, 3) end
  end

  local function changing(name)
    if undo_depth == 0 then table.insert(state.changed_outside_undo, name) end
  end

  -- Project tabs: open[i] is the i-th tab's ReaProject handle; `active` the current tab.
  local open, active = {}, nil
  local function new_project(file, h)
    h = h or setmetatable({}, handle_mt)
    records[h] = { kind = "ReaProject", file = file, tracks = {}, markers = {} }
    open[#open + 1] = h
    active = h
    return h
  end
  local first = new_project(scenario.project_file or "/projects/song.rpp")
  local function tracks_of(project) return records[project].tracks end

  local function new_source(spec)
    if spec.section then  -- a SECTION source wrapping the file's own source
      local parent = new_source({ file = spec.file, type = spec.type, source_length = spec.file_length })
      return handle("PCM_source", { type = "SECTION", file = "", length = spec.source_length, parent = parent,
        section = spec.section })
    end
    return handle("PCM_source", { file = spec.file, type = spec.type or "WAVE", length = spec.source_length })
  end

  local take_defaults = { D_STARTOFFS = 0, D_PLAYRATE = 1, D_PITCH = 0, B_PPITCH = 0, I_CHANMODE = 0,
    I_PITCHMODE = -1, D_VOL = 1, D_PAN = 0 }
  local function new_take(item, spec)
    local values = {}
    for key, default in pairs(take_defaults) do values[key] = default end
    for key, value in pairs(spec.values or {}) do values[key] = value end
    local take = handle("MediaItem_Take", {
      item = item, values = values, name = "", stretch_markers = spec.stretch_markers or 0,
      source = spec.file and new_source(spec) or nil,
    })
    local record = records[item]
    record.takes[#record.takes + 1] = take
    record.active = record.active or take
    return take
  end

  local function new_item(track, spec)
    local item = handle("MediaItem", {
      track = track, position = spec.position or 0, length = spec.length or 0,
      loop = spec.loop and 1 or 0, selected = spec.selected or false, takes = {},
    })
    table.insert(records[track].items, item)
    if spec.take then new_take(item, spec.take) end
    return item
  end

  local function new_track(project, index, name)
    local track = handle("MediaTrack", { name = name or "", items = {}, project = project })
    table.insert(tracks_of(project), index, track)
    return track
  end

  for i, spec in ipairs(scenario.tracks or {}) do
    local track = new_track(first, i, spec.name)
    for _, item in ipairs(spec.items or {}) do new_item(track, item) end
  end

  local function selected_items()
    local out = {}
    for _, track in ipairs(tracks_of(active)) do
      for _, item in ipairs(records[track].items) do
        if records[item].selected then out[#out + 1] = item end
      end
    end
    return out
  end

  -- proj=0 means the active project, as the documentation says for every function taking one.
  local function project_arg(proj)
    if proj == 0 then return active end
    get(proj, "ReaProject")
    return proj
  end

  local item_keys = { D_POSITION = "position", D_LENGTH = "length", B_LOOPSRC = "loop" }
  local api = {}

  -- v7.27: string reaper.GetOS() -- Returns "Win32", "Win64", "OSX32", "OSX64", "macOS-arm64", or "Other".
  function api.GetOS() return scenario.os end
  -- v7.27: string reaper.GetAppVersion() -- Returns app version which may include an OS/arch
  -- signifier, such as: ... "6.17/linux-x86_64" ...
  function api.GetAppVersion() return scenario.app_version or "7.27/linux-x86_64" end
  -- v7.27: string reaper.GetResourcePath() -- returns path where ini files are stored, other
  -- things are in subdirectories.
  function api.GetResourcePath() return scenario.resource end
  -- v7.27: string buf = reaper.GetProjectPath() -- Get the project recording path.
  -- v6.09: string buf = reaper.GetProjectPath(string buf): REAPER 6 wants the buffer argument.
  function api.GetProjectPath(buf)
    check(type(buf) == "string", "GetProjectPath(\"\"): REAPER 6 needs the string buffer")
    return scenario.project_path
  end
  -- v7.27: number reaper.time_precise() -- Gets a precise system timestamp in seconds
  function api.time_precise() return clock end
  -- v7.27: ReaProject retval, optional string projfn = reaper.EnumProjects(integer idx) --
  -- idx=-1 for current project,projfn can be NULL if not interested in filename.
  -- Past the last tab: nil (public scripts loop `while EnumProjects(i)`).
  function api.EnumProjects(idx)
    check(math.type(idx) == "integer", "EnumProjects(integer idx)")
    local project = idx == -1 and active or open[idx + 1]
    if not project then return nil end
    return project, records[project].file
  end
  -- v7.27: boolean reaper.ValidatePtr(identifier pointer, string ctypename) -- see ValidatePtr2
  function api.ValidatePtr(pointer, kind)
    check(kind == "ReaProject*", "ValidatePtr: the fake validates ReaProject* only")
    for _, project in ipairs(open) do
      if project == pointer then return true end
    end
    return false
  end
  -- v7.27: boolean reaper.ValidatePtr2(ReaProject proj, identifier pointer, string ctypename) --
  -- Return true if the pointer is a valid object of the right type in proj (proj is ignored if
  -- pointer is itself a project). Supported types are: ReaProject*, MediaTrack*, ...
  function api.ValidatePtr2(proj, pointer, kind)
    check(kind == "MediaTrack*", "ValidatePtr2: the fake validates MediaTrack* only")
    for _, track in ipairs(tracks_of(project_arg(proj))) do
      if track == pointer then return true end
    end
    return false
  end
  -- v7.27: integer reaper.RecursiveCreateDirectory(string path, integer ignored) -- returns
  -- positive value on success, 0 on failure.
  function api.RecursiveCreateDirectory(path, ignored)
    check(type(path) == "string" and math.type(ignored) == "integer", "RecursiveCreateDirectory(path, 0)")
    return os.execute("mkdir -p " .. sh_quote(path)) and 1 or 0
  end
  -- v7.27: boolean reaper.file_exists(string path) -- returns true if path points to a valid,
  -- readable file
  function api.file_exists(path)
    check(type(path) == "string", "file_exists(path)")
    return read_file(path) ~= nil
  end

  -- v7.27: number start, number end = reaper.GetSet_LoopTimeRange(boolean isSet, boolean isLoop,
  -- number start, number end, boolean allowautoseek) (no description; with no time selection
  -- REAPER returns start == end, which public scripts test for)
  function api.GetSet_LoopTimeRange(is_set, is_loop, start, stop, autoseek)
    check(is_set == false and is_loop == false and type(start) == "number" and type(stop) == "number"
      and type(autoseek) == "boolean", "GetSet_LoopTimeRange(false, false, start, end, allowautoseek)")
    local sel = scenario.time_selection
    if sel then return sel[1], sel[2] end
    return 0.0, 0.0
  end
  -- v7.27: integer reaper.CountSelectedMediaItems(ReaProject proj) -- count the number of
  -- selected items in the project (proj=0 for active project)
  function api.CountSelectedMediaItems(proj)
    project_arg(proj)
    return #selected_items()
  end
  -- v7.27: MediaItem reaper.GetSelectedMediaItem(ReaProject proj, integer selitem) -- get a
  -- selected item by selected item count (zero-based) (proj=0 for active project)
  function api.GetSelectedMediaItem(proj, index)
    check(proj == 0 and math.type(index) == "integer", "GetSelectedMediaItem(0, index)")
    return selected_items()[index + 1]
  end
  -- v7.27: number reaper.GetMediaItemInfo_Value(MediaItem item, string parmname) -- ...
  -- B_LOOPSRC : bool * : loop source ... D_POSITION : double * : item position in seconds
  -- D_LENGTH : double * : item length in seconds
  function api.GetMediaItemInfo_Value(item, key)
    local record = get(item, "MediaItem")
    check(item_keys[key], "GetMediaItemInfo_Value: the fake has no " .. tostring(key))
    return record[item_keys[key]]
  end
  -- v7.27: boolean reaper.SetMediaItemInfo_Value(MediaItem item, string parmname, number newvalue)
  function api.SetMediaItemInfo_Value(item, key, value)
    local record = get(item, "MediaItem")
    check(item_keys[key] and type(value) == "number", "SetMediaItemInfo_Value: the fake has no " .. tostring(key))
    changing("SetMediaItemInfo_Value")
    record[item_keys[key]] = value
    return true
  end
  -- v7.27: MediaTrack reaper.GetMediaItem_Track(MediaItem item) -- Get parent track of media item
  function api.GetMediaItem_Track(item) return get(item, "MediaItem").track end
  -- v7.27: MediaItem_Take reaper.GetActiveTake(MediaItem item) -- get the active take in this
  -- item. An empty item has none: nil.
  function api.GetActiveTake(item) return get(item, "MediaItem").active end
  -- v7.27: boolean reaper.TakeIsMIDI(MediaItem_Take take) -- Returns true if the active take
  -- contains MIDI.
  function api.TakeIsMIDI(take)
    local source = get(take, "MediaItem_Take").source
    return source ~= nil and records[source].type == "MIDI"
  end
  -- v7.27: PCM_source reaper.GetMediaItemTake_Source(MediaItem_Take take) -- Get media source
  -- of media item take
  function api.GetMediaItemTake_Source(take) return get(take, "MediaItem_Take").source end
  -- v7.27: string typebuf = reaper.GetMediaSourceType(PCM_source source) -- copies the media
  -- source type ("WAV", "MIDI", etc) to typebuf
  -- v6.09: string typebuf = reaper.GetMediaSourceType(PCM_source source, string typebuf)
  function api.GetMediaSourceType(source, buf)
    check(type(buf) == "string", "GetMediaSourceType(source, \"\"): REAPER 6 needs the string buffer")
    return get(source, "PCM_source").type
  end
  -- v7.27: string filenamebuf = reaper.GetMediaSourceFileName(PCM_source source) -- Copies the
  -- media source filename to filenamebuf. Note that in-project MIDI media sources have no
  -- associated filename. See GetMediaSourceParent.
  -- v6.09: string filenamebuf = reaper.GetMediaSourceFileName(PCM_source source, string filenamebuf)
  -- A SECTION source gives "" (the documentation points to the parent for the file; public
  -- scripts call GetMediaSourceParent on sections before asking for a file name).
  function api.GetMediaSourceFileName(source, buf)
    check(type(buf) == "string", "GetMediaSourceFileName(source, \"\"): REAPER 6 needs the string buffer")
    return get(source, "PCM_source").file
  end
  -- v7.27: PCM_source reaper.GetMediaSourceParent(PCM_source src) -- Returns the parent source,
  -- or NULL if src is the root source. This can be used to retrieve the parent properties of
  -- sections or reversed sources for example.
  function api.GetMediaSourceParent(source) return get(source, "PCM_source").parent end
  -- v7.27: boolean retval, number offs, number len, boolean rev =
  -- reaper.PCM_Source_GetSectionInfo(PCM_source src) -- If a section/reverse block, retrieves
  -- offset/len/reverse. return true if success
  -- Not a section: false, 0, 0, false (as public scripts read it: "if sect is false ... are 0").
  function api.PCM_Source_GetSectionInfo(source)
    local section = get(source, "PCM_source").section
    if not section then return false, 0.0, 0.0, false end
    return true, section.offset or 0.0, section.length, section.reverse or false
  end
  -- v7.27: number retval, boolean lengthIsQN = reaper.GetMediaSourceLength(PCM_source source) --
  -- Returns the length of the source media. If the media source is beat-based, the length
  -- will be in quarter notes, otherwise it will be in seconds.
  function api.GetMediaSourceLength(source) return get(source, "PCM_source").length, false end
  -- v7.27: integer reaper.GetTakeNumStretchMarkers(MediaItem_Take take) -- Returns number of
  -- stretch markers in take
  function api.GetTakeNumStretchMarkers(take) return get(take, "MediaItem_Take").stretch_markers end
  -- v7.27: number reaper.GetMediaItemTakeInfo_Value(MediaItem_Take take, string parmname) --
  -- D_STARTOFFS : double * : start offset in source media, in seconds
  -- D_VOL : double * : take volume, 0=-inf, 0.5=-6dB, 1=+0dB, 2=+6dB, etc, negative if take polarity is flipped
  -- D_PAN : double * : take pan, -1..1
  -- D_PLAYRATE : double * : take playback rate, 0.5=half speed, 1=normal, 2=double speed, etc
  -- D_PITCH : double * : take pitch adjustment in semitones, -12=one octave down, 0=normal, ...
  -- B_PPITCH : bool * : preserve pitch when changing playback rate
  -- I_CHANMODE : int * : channel mode, 0=normal, 1=reverse stereo, 2=downmix, 3=left, 4=right
  -- I_PITCHMODE : int * : pitch shifter mode, -1=project default, otherwise high 2 bytes=shifter, low 2 bytes=parameter
  function api.GetMediaItemTakeInfo_Value(take, key)
    local record = get(take, "MediaItem_Take")
    check(take_defaults[key], "GetMediaItemTakeInfo_Value: the fake has no " .. tostring(key))
    return record.values[key]
  end
  -- v7.27: boolean reaper.SetMediaItemTakeInfo_Value(MediaItem_Take take, string parmname, number newvalue)
  function api.SetMediaItemTakeInfo_Value(take, key, value)
    local record = get(take, "MediaItem_Take")
    check(take_defaults[key] and type(value) == "number",
      "SetMediaItemTakeInfo_Value: the fake has no " .. tostring(key))
    changing("SetMediaItemTakeInfo_Value")
    record.values[key] = value
    return true
  end
  -- v7.27: boolean retval, string stringNeedBig = reaper.GetSetMediaItemTakeInfo_String(
  -- MediaItem_Take tk, string parmname, string stringNeedBig, boolean setNewValue) --
  -- P_NAME : char * : take name
  function api.GetSetMediaItemTakeInfo_String(take, key, value, set)
    local record = get(take, "MediaItem_Take")
    check(key == "P_NAME" and type(value) == "string" and set == true,
      "GetSetMediaItemTakeInfo_String(take, \"P_NAME\", name, true)")
    changing("GetSetMediaItemTakeInfo_String")
    record.name = value
    return true, value
  end

  -- v7.27: integer reaper.CountTracks(ReaProject proj) -- count the number of tracks in the
  -- project (proj=0 for active project)
  function api.CountTracks(proj) return #tracks_of(project_arg(proj)) end
  -- v7.27: MediaTrack reaper.GetTrack(ReaProject proj, integer trackidx) -- get a track from a
  -- project by track count (zero-based) (proj=0 for active project)
  function api.GetTrack(proj, index)
    check(math.type(index) == "integer", "GetTrack(proj, integer trackidx)")
    return tracks_of(project_arg(proj))[index + 1]
  end
  -- v7.27: number reaper.GetMediaTrackInfo_Value(MediaTrack tr, string parmname) --
  -- IP_TRACKNUMBER : int : track number 1-based, 0=not found, -1=master track (read-only, returns the int directly)
  function api.GetMediaTrackInfo_Value(track, key)
    check(key == "IP_TRACKNUMBER", "GetMediaTrackInfo_Value: the fake has only IP_TRACKNUMBER")
    local record = get(track, "MediaTrack")
    for i, t in ipairs(tracks_of(record.project)) do
      if t == track then return i + 0.0 end
    end
    return 0.0
  end
  -- v7.27: reaper.InsertTrackAtIndex(integer idx, boolean wantDefaults) -- inserts a track at
  -- idx,of course this will be clamped to 0..GetNumTracks(). (In the active project.)
  function api.InsertTrackAtIndex(index, defaults)
    check(math.type(index) == "integer" and type(defaults) == "boolean",
      "InsertTrackAtIndex(integer idx, boolean wantDefaults)")
    changing("InsertTrackAtIndex")
    new_track(active, math.max(0, math.min(index, #tracks_of(active))) + 1)
  end
  -- v7.27: boolean retval, string stringNeedBig = reaper.GetSetMediaTrackInfo_String(
  -- MediaTrack tr, string parmname, string stringNeedBig, boolean setNewValue) -- P_NAME : char * : track name
  function api.GetSetMediaTrackInfo_String(track, key, value, set)
    local record = get(track, "MediaTrack")
    check(key == "P_NAME" and type(value) == "string" and set == true,
      "GetSetMediaTrackInfo_String(track, \"P_NAME\", name, true)")
    changing("GetSetMediaTrackInfo_String")
    record.name = value
    return true, value
  end
  -- v7.27: MediaItem reaper.AddMediaItemToTrack(MediaTrack tr) -- creates a new media item.
  function api.AddMediaItemToTrack(track)
    get(track, "MediaTrack")
    changing("AddMediaItemToTrack")
    return new_item(track, {})
  end
  -- v7.27: MediaItem_Take reaper.AddTakeToMediaItem(MediaItem item) -- creates a new take in an item
  function api.AddTakeToMediaItem(item)
    get(item, "MediaItem")
    changing("AddTakeToMediaItem")
    return new_take(item, {})
  end
  -- v7.27: PCM_source reaper.PCM_Source_CreateFromFile(string filename) -- See
  -- PCM_Source_CreateFromFileEx. (Create a PCM_source from filename ...) A file that cannot be
  -- opened gives nil, not an error: C returns NULL, which Lua sees as nil.
  function api.PCM_Source_CreateFromFile(path)
    check(type(path) == "string", "PCM_Source_CreateFromFile(string filename)")
    if read_file(path) == nil then return nil end
    return handle("PCM_source", { file = path, type = "WAVE" })
  end
  -- v7.27: reaper.PCM_Source_Destroy(PCM_source src) -- Deletes a PCM_source -- be sure that you
  -- remove any project reference before deleting a source
  function api.PCM_Source_Destroy(source)
    local record = get(source, "PCM_source")
    check(not record.attached, "PCM_Source_Destroy: the source is still used by a take")
    record.gone = true
    state.destroyed_sources = state.destroyed_sources + 1
  end
  -- v7.27: boolean reaper.SetMediaItemTake_Source(MediaItem_Take take, PCM_source source) --
  -- Set media source of media item take. The old source will not be destroyed, ...
  function api.SetMediaItemTake_Source(take, source)
    local record = get(take, "MediaItem_Take")
    get(source, "PCM_source").attached = true
    changing("SetMediaItemTake_Source")
    record.source = source
    return true
  end

  -- v7.27: reaper.Undo_BeginBlock() -- call to start a new block
  function api.Undo_BeginBlock()
    undo_depth = undo_depth + 1
    table.insert(state.undo, { event = "begin" })
  end
  -- v7.27: reaper.Undo_EndBlock(string descchange, integer extraflags) -- call to end the
  -- block,with extra flags if any,and a description
  function api.Undo_EndBlock(description, flags)
    check(undo_depth > 0, "Undo_EndBlock without Undo_BeginBlock")
    check(type(description) == "string" and math.type(flags) == "integer",
      "Undo_EndBlock(string descchange, integer extraflags)")
    undo_depth = undo_depth - 1
    table.insert(state.undo, { event = "end", description = description, flags = flags })
  end
  -- v7.27: reaper.PreventUIRefresh(integer prevent_count) -- adds prevent_count to the UI
  -- refresh prevention state; always add then remove the same amount, or major disfunction will occur
  function api.PreventUIRefresh(n)
    check(math.type(n) == "integer", "PreventUIRefresh(integer)")
    state.refresh_prevented = state.refresh_prevented + n
  end
  -- v7.27: reaper.UpdateTimeline() -- Redraw the arrange view and ruler
  function api.UpdateTimeline() end
  -- v7.27: integer reaper.AddProjectMarker2(ReaProject proj, boolean isrgn, number pos, number
  -- rgnend, string name, integer wantidx, integer color) -- Returns the index of the created
  -- marker/region, or -1 on failure. Supply wantidx>=0 if you want a particular index number,
  -- but you'll get a different index number a region and wantidx is already in use. color
  -- should be 0 (default color), or ColorToNative(r,g,b)|0x1000000
  -- With wantidx -1 the fake numbers markers and regions apart, each one past the highest of
  -- its kind (REAPER's own choice of number is not documented; the actions ignore it).
  function api.AddProjectMarker2(proj, isrgn, pos, rgnend, name, wantidx, color)
    check(type(isrgn) == "boolean" and type(pos) == "number" and type(rgnend) == "number" and type(name) == "string"
      and math.type(wantidx) == "integer" and math.type(color) == "integer",
      "AddProjectMarker2(proj, boolean isrgn, pos, rgnend, name, integer wantidx, integer color)")
    local markers = records[project_arg(proj)].markers
    changing("AddProjectMarker2")
    local number = 0
    for _, m in ipairs(markers) do
      if m.region == isrgn then number = math.max(number, m.number) end
    end
    number = wantidx >= 0 and wantidx or number + 1
    table.insert(markers, { region = isrgn, position = pos, region_end = rgnend, name = name, number = number,
      color = color })
    return number
  end
  -- v7.27: integer reaper.ShowMessageBox(string msg, string title, integer type) -- type 0=OK,...
  function api.ShowMessageBox(message, title, kind)
    check(type(message) == "string" and type(title) == "string" and kind == 0, "ShowMessageBox(msg, title, 0)")
    table.insert(state.messages, message)
    return 1
  end
  -- v7.27: boolean retval, string retvals_csv = reaper.GetUserInputs(string title, integer
  -- num_inputs, string captions_csv, string retvals_csv) -- ... Returns false if the user
  -- canceled the dialog. ... extrawidth=XXX to increase text field width, separator=X to use a
  -- different separator for returned fields.
  -- A dialog of several fields returns them joined by the separator; scenario.answer is the
  -- text of the one field, or a list of the fields' texts.
  function api.GetUserInputs(title, count, captions, values)
    check(type(title) == "string" and math.type(count) == "integer" and type(captions) == "string"
      and type(values) == "string", "GetUserInputs(title, num_inputs, captions_csv, retvals_csv)")
    state.asked = { title = title, count = count, captions = captions, values = values }
    if scenario.answer == nil then return false, values end
    if type(scenario.answer) == "string" then
      check(count == 1, "GetUserInputs: the scenario answers one field")
      return true, scenario.answer
    end
    check(#scenario.answer == count, "GetUserInputs: the scenario answers another number of fields")
    return true, table.concat(scenario.answer, captions:match(",separator=(.)") or ",")
  end
  -- v7.27: string reaper.GetExtState(string section, string key) -- Get the extended state
  -- value for a specific section and key. See SetExtState, DeleteExtState, HasExtState.
  -- A key never set gives "" (public scripts test for it; HasExtState tells the two apart).
  -- The state starts as scenario.extstate ({section = {key = value}}).
  function api.GetExtState(section, key)
    check(type(section) == "string" and type(key) == "string", "GetExtState(string section, string key)")
    local stored = state.extstate[section .. "/" .. key]
    if stored then return stored.value end
    return ((scenario.extstate or {})[section] or {})[key] or ""
  end
  -- v7.27: reaper.SetExtState(string section, string key, string value, boolean persist) -- Set
  -- the extended state value for a specific section and key. persist=true means the value
  -- should be stored and reloaded the next time REAPER is opened. See GetExtState,
  -- DeleteExtState, HasExtState.
  function api.SetExtState(section, key, value, persist)
    check(type(section) == "string" and type(key) == "string" and type(value) == "string"
      and type(persist) == "boolean", "SetExtState(string section, string key, string value, boolean persist)")
    state.extstate[section .. "/" .. key] = { value = value, persist = persist }
  end

  -- v7.27: string reaper.ExecProcess(string cmdline, integer timeoutmsec) -- Executes command
  -- line, returns NULL on total failure, otherwise the return value, a newline, and then the
  -- output of the command. ... timeoutmsec is -1 for no wait/terminate, -2 for no wait and minimize
  -- How it splits cmdline on macOS/Linux is not documented: the fake requires that a
  -- quote-aware splitter and /bin/sh read the same argv. The child starts with an empty
  -- environment plus scenario.child_env, in the background, writing to scenario.process_log.
  -- A program that does not exist is a total failure: nil.
  function api.ExecProcess(cmd, timeout)
    check(type(cmd) == "string" and (timeout == -1 or timeout == -2),
      "ExecProcess(cmdline, -1): the actions must not wait")
    local argv
    if scenario.os:match("^Win") then
      argv = Fake.split_windows(cmd)
    else
      argv = Fake.split_unix(cmd)
      local by_sh = Fake.split_sh(cmd)
      check(Fake.to_json(by_sh) == Fake.to_json(argv), "ExecProcess: /bin/sh reads this command line differently: "
        .. cmd)
    end
    table.insert(state.execs, { cmd = cmd, timeout = timeout, argv = argv, job = read_file(argv[#argv]) })
    exec_cycle = exec_cycle or cycle
    if read_file(argv[1]) == nil then return nil end
    local words = { "env", "-i" }
    for name, value in pairs(scenario.child_env or {}) do words[#words + 1] = sh_quote(name .. "=" .. value) end
    for _, arg in ipairs(argv) do words[#words + 1] = sh_quote(arg) end
    os.execute(table.concat(words, " ") .. " >>" .. sh_quote(scenario.process_log) .. " 2>&1 &")
    return ""
  end
  -- v7.27 (Lua): reaper.defer(function) -- Adds code to be called back by REAPER. Used to
  -- create persistent ReaScripts that continue to run and respond to input, while the user
  -- does other tasks.
  function api.defer(fn)
    check(type(fn) == "function", "defer(function)")
    queue[#queue + 1] = { instance = current, fn = fn }
  end
  -- v7.27 (Lua): reaper.atexit(function) -- Adds code to be executed when the script finishes
  -- or is ended by the user. Typically used to clean up after the user terminates defer() or
  -- runloop() code.
  function api.atexit(fn)
    check(type(fn) == "function", "atexit(function)")
    table.insert(current.atexit, fn)
  end

  local reaper = setmetatable({}, {
    __index = function(_, name)
      local fn = api[name]
      if not fn then error("the fake REAPER has no reaper." .. tostring(name), 2) end
      return function(...)
        table.insert(state.calls, name)
        if scenario.fail_call == name then error("simulated failure in reaper." .. name, 2) end
        return fn(...)
      end
    end,
    __newindex = function() error("the actions must not change the reaper table", 2) end,
  })

  -- Run fn as `instance`; an error ends the instance, as a script error ends a ReaScript.
  local function as_instance(instance, fn)
    local previous = current
    current = instance
    local ok, err = xpcall(fn, debug.traceback)
    current = previous
    if not ok then
      table.insert(state.script_errors, err)
      instance.failed = true
    end
  end

  local function pending(instance)
    for _, entry in ipairs(queue) do
      if entry.instance == instance then return true end
    end
    return false
  end

  -- End an instance (finished, failed or terminated by the user): drop its deferred calls and
  -- run its atexit functions.
  local function end_instance(instance)
    local kept = {}
    for _, entry in ipairs(queue) do
      if entry.instance ~= instance then kept[#kept + 1] = entry end
    end
    queue = kept
    instance.ended = true
    for _, fn in ipairs(instance.atexit) do
      state.atexit_ran = state.atexit_ran + 1
      as_instance(instance, fn)
    end
  end

  local function end_finished()
    for _, instance in ipairs(instances) do
      if not instance.ended and (instance.failed or not pending(instance)) then end_instance(instance) end
    end
  end

  launch = function(action)
    local instance = { atexit = {}, action = action }
    instances[#instances + 1] = instance
    as_instance(instance, function() dofile(action) end)
    end_finished()
    return instance
  end

  -- What the user does while clapsep runs, `cycle` defer cycles after the action started it.
  local happenings = {
    ["delete first track"] = function()
      local track = table.remove(tracks_of(first), 1)
      records[track].gone = true
    end,
    ["switch project"] = function() new_project("/projects/other.rpp") end,
    ["switch back"] = function() active = first end,
    ["close project"] = function()
      table.remove(open, 1)
      records[first].gone = true
      active = open[1] or new_project("")
    end,
    -- The tab is closed and the project opened next gets the same pointer (memory reuse).
    ["reopen project"] = function()
      local tracks = tracks_of(first)
      table.remove(open, 1)
      new_project("/projects/new song.rpp", first)
      state.closed_tracks = tracks
    end,
    -- The action is launched again while it still runs: REAPER asks (ReaScript task control)
    -- whether to terminate the running instance or to start a new one.
    ["relaunch: terminate"] = function()
      local running = instances[1]
      if running.ended then return launch(running.action) end
      table.insert(state.dialogs, "ReaScript task control")
      end_instance(running)
    end,
    ["relaunch: new instance"] = function()
      local running = instances[1]
      if not running.ended then table.insert(state.dialogs, "ReaScript task control") end
      launch(running.action)
    end,
  }
  local events = {}
  for i, event in ipairs(scenario.events or {}) do
    events[i] = { cycle = event.cycle, what = assert(happenings[event.what], "no event " .. event.what) }
  end

  -- Run deferred callbacks, one REAPER cycle (`step` real seconds, `step * clock_speed` on the
  -- fake clock) at a time, until every instance has ended or `limit` real seconds have passed.
  local function run(step, limit)
    local waited = 0
    while #queue > 0 do
      if waited > limit then state.timed_out = true return end
      for _, event in ipairs(events) do
        if not event.done and exec_cycle and cycle - exec_cycle >= event.cycle then
          event.done = true
          event.what()
        end
      end
      local batch = queue
      queue = {}
      for _, entry in ipairs(batch) do
        if not entry.instance.ended then as_instance(entry.instance, entry.fn) end
      end
      end_finished()
      cycle = cycle + 1
      if #queue > 0 then
        os.execute("sleep " .. step)
        waited = waited + step
        clock = clock + step * (scenario.clock_speed or 1)
      end
    end
  end

  -- The projects as plain tables, for the test to read: the first project's tracks and
  -- markers, and the track names and marker count of every open tab.
  local function snapshot_tracks(list)
    local tracks = {}
    for i, track in ipairs(list) do
      local t = records[track]
      local items = {}
      for j, item in ipairs(t.items) do
        local it = records[item]
        local takes = {}
        for k, take in ipairs(it.takes) do
          local tk = records[take]
          takes[k] = { name = tk.name, values = tk.values, file = tk.source and records[tk.source].file or nil }
        end
        items[j] = { position = it.position, length = it.length, loop = it.loop, takes = takes }
      end
      tracks[i] = { name = t.name, items = items }
    end
    return tracks
  end
  local function snapshot()
    local tabs = {}
    for i, project in ipairs(open) do
      local names = {}
      for j, track in ipairs(tracks_of(project)) do names[j] = records[track].name end
      tabs[i] = { file = records[project].file, tracks = names, markers = #records[project].markers }
    end
    return { tracks = snapshot_tracks(state.closed_tracks or tracks_of(first)), tabs = tabs,
      markers = records[first].markers }
  end

  return { reaper = reaper, state = state, launch = launch, run = run, snapshot = snapshot }
end

return Fake
