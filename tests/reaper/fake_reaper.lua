-- A stand-in for REAPER's `reaper` table, for running the clapsep actions under plain Lua.
--
-- It provides only the functions the actions use (anything else raises an error), keeps a
-- small model of tracks, items, takes and sources, logs every call, and really starts the
-- processes ExecProcess is given: the command line is split the way REAPER splits it on the
-- scenario's OS, and the resulting argv is run through /bin/sh in the background.

local Fake = {}

-- argv from a command line as REAPER splits it on macOS/Linux: at spaces, honouring "...",
-- '...' and `...` with no escape characters.
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

local function sh_quote(arg)
  return "'" .. arg:gsub("'", "'\\''") .. "'"
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local text = f:read("a")
  f:close()
  return text
end

-- A fresh fake for `scenario` (see tests/test_reaper.py for its fields). Returns the reaper
-- table, the recorded state, and a function that runs deferred callbacks until none remain.
function Fake.new(scenario)
  local state = {
    calls = {}, messages = {}, execs = {}, undo = {}, changed_outside_undo = {}, tracks = {},
    asked = nil, refresh_prevented = 0, timed_out = false,
  }
  local records = setmetatable({}, { __mode = "k" })
  local handle_mt = {
    __index = function() error("a REAPER handle is opaque", 2) end,
    __newindex = function() error("a REAPER handle is opaque", 2) end,
  }
  local project = setmetatable({}, handle_mt)
  records[project] = { kind = "ReaProject" }
  local clock, queue, undo_depth = 0.0, {}, 0

  local function handle(kind, record)
    local h = setmetatable({}, handle_mt)
    record.kind, records[h] = kind, record
    record.handle = h
    return h
  end

  local function get(h, kind)
    local record = records[h]
    if not record or record.kind ~= kind then error("expected a " .. kind .. ", got " .. tostring(h), 3) end
    return record
  end

  local function changing(name)
    if undo_depth == 0 then table.insert(state.changed_outside_undo, name) end
  end

  local function check(ok, message)
    if not ok then error(message, 3) end
  end

  local function new_source(file, kind, length)
    return handle("PCM_source", { file = file, type = kind, length = length })
  end

  local function new_take(item, spec)
    local take = handle("MediaItem_Take", {
      item = item, startoffs = spec.startoffs or 0, playrate = spec.playrate or 1, pitch = spec.pitch or 0,
      ppitch = spec.ppitch or 0, name = spec.name or "", stretch_markers = spec.stretch_markers or 0,
      source = spec.file and new_source(spec.file, spec.type or "WAVE", spec.source_length) or nil,
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

  local function new_track(index, name)
    local track = handle("MediaTrack", { name = name or "", items = {} })
    table.insert(state.tracks, index, track)
    return track
  end

  for i, spec in ipairs(scenario.tracks or {}) do
    local track = new_track(i, spec.name)
    for _, item in ipairs(spec.items or {}) do new_item(track, item) end
  end

  local function selected_items()
    local out = {}
    for _, track in ipairs(state.tracks) do
      for _, item in ipairs(records[track].items) do
        if records[item].selected then out[#out + 1] = item end
      end
    end
    return out
  end

  local item_keys = { D_POSITION = "position", D_LENGTH = "length", B_LOOPSRC = "loop" }
  local take_keys = { D_STARTOFFS = "startoffs", D_PLAYRATE = "playrate", D_PITCH = "pitch", B_PPITCH = "ppitch" }

  local api = {}

  function api.GetOS() return scenario.os end
  function api.GetResourcePath() return scenario.resource end
  function api.GetProjectPath() return scenario.project_path end
  function api.time_precise() return clock end
  function api.EnumProjects(idx)
    check(idx == -1, "EnumProjects: the actions ask for the current project, -1")
    return project, ""
  end
  function api.RecursiveCreateDirectory(path, ignored)
    check(type(path) == "string" and math.type(ignored) == "integer", "RecursiveCreateDirectory(path, 0)")
    os.execute("mkdir -p " .. sh_quote(path))
    return 1
  end
  function api.file_exists(path)
    check(type(path) == "string", "file_exists(path)")
    return read_file(path) ~= nil
  end

  function api.GetSet_LoopTimeRange(is_set, is_loop, start, stop, autoseek)
    check(is_set == false and is_loop == false and type(start) == "number" and type(stop) == "number"
      and type(autoseek) == "boolean", "GetSet_LoopTimeRange(false, false, start, end, allowautoseek)")
    local sel = scenario.time_selection
    if sel then return sel[1], sel[2] end
    return 0.0, 0.0
  end
  function api.CountSelectedMediaItems(proj)
    check(proj == 0, "CountSelectedMediaItems(0)")
    return #selected_items()
  end
  function api.GetSelectedMediaItem(proj, index)
    check(proj == 0 and math.type(index) == "integer", "GetSelectedMediaItem(0, index)")
    return selected_items()[index + 1]
  end
  function api.GetMediaItemInfo_Value(item, key)
    local record = get(item, "MediaItem")
    check(item_keys[key], "GetMediaItemInfo_Value: the fake has no " .. tostring(key))
    return record[item_keys[key]]
  end
  function api.SetMediaItemInfo_Value(item, key, value)
    local record = get(item, "MediaItem")
    check(item_keys[key] and type(value) == "number", "SetMediaItemInfo_Value: the fake has no " .. tostring(key))
    changing("SetMediaItemInfo_Value")
    record[item_keys[key]] = value
    return true
  end
  function api.GetMediaItem_Track(item) return get(item, "MediaItem").track end
  function api.GetActiveTake(item) return get(item, "MediaItem").active end
  function api.GetMediaItemTake_Source(take) return get(take, "MediaItem_Take").source end
  function api.GetMediaSourceType(source) return get(source, "PCM_source").type end
  function api.GetMediaSourceFileName(source) return get(source, "PCM_source").file end
  function api.GetMediaSourceLength(source) return get(source, "PCM_source").length, false end
  function api.GetTakeNumStretchMarkers(take) return get(take, "MediaItem_Take").stretch_markers end
  function api.GetMediaItemTakeInfo_Value(take, key)
    local record = get(take, "MediaItem_Take")
    check(take_keys[key], "GetMediaItemTakeInfo_Value: the fake has no " .. tostring(key))
    return record[take_keys[key]]
  end
  function api.SetMediaItemTakeInfo_Value(take, key, value)
    local record = get(take, "MediaItem_Take")
    check(take_keys[key] and type(value) == "number", "SetMediaItemTakeInfo_Value: the fake has no " .. tostring(key))
    changing("SetMediaItemTakeInfo_Value")
    record[take_keys[key]] = value
    return true
  end
  function api.GetSetMediaItemTakeInfo_String(take, key, value, set)
    local record = get(take, "MediaItem_Take")
    check(key == "P_NAME" and type(value) == "string" and set == true,
      "GetSetMediaItemTakeInfo_String(take, \"P_NAME\", name, true)")
    changing("GetSetMediaItemTakeInfo_String")
    record.name = value
    return true, value
  end

  function api.CountTracks(proj)
    check(proj == 0, "CountTracks(0)")
    return #state.tracks
  end
  function api.GetTrack(proj, index)
    check(proj == 0 and math.type(index) == "integer", "GetTrack(0, integer index)")
    return state.tracks[index + 1]
  end
  function api.ValidatePtr2(proj, pointer, kind)
    check(proj == project and kind == "MediaTrack*", "ValidatePtr2(project, track, \"MediaTrack*\")")
    for _, track in ipairs(state.tracks) do
      if track == pointer then return true end
    end
    return false
  end
  function api.GetMediaTrackInfo_Value(track, key)
    check(key == "IP_TRACKNUMBER", "GetMediaTrackInfo_Value: the fake has only IP_TRACKNUMBER")
    get(track, "MediaTrack")
    for i, t in ipairs(state.tracks) do
      if t == track then return i + 0.0 end
    end
    return 0.0
  end
  function api.InsertTrackAtIndex(index, defaults)
    check(math.type(index) == "integer" and type(defaults) == "boolean",
      "InsertTrackAtIndex(integer idx, boolean wantDefaults)")
    changing("InsertTrackAtIndex")
    new_track(math.max(0, math.min(index, #state.tracks)) + 1)
  end
  function api.GetSetMediaTrackInfo_String(track, key, value, set)
    local record = get(track, "MediaTrack")
    check(key == "P_NAME" and type(value) == "string" and set == true,
      "GetSetMediaTrackInfo_String(track, \"P_NAME\", name, true)")
    changing("GetSetMediaTrackInfo_String")
    record.name = value
    return true, value
  end
  function api.AddMediaItemToTrack(track)
    get(track, "MediaTrack")
    changing("AddMediaItemToTrack")
    return new_item(track, {})
  end
  function api.AddTakeToMediaItem(item)
    get(item, "MediaItem")
    changing("AddTakeToMediaItem")
    return new_take(item, {})
  end
  function api.PCM_Source_CreateFromFile(path)
    check(read_file(path) ~= nil, "PCM_Source_CreateFromFile: no file " .. tostring(path))
    return new_source(path, "WAVE", nil)
  end
  function api.SetMediaItemTake_Source(take, source)
    local record = get(take, "MediaItem_Take")
    get(source, "PCM_source")
    changing("SetMediaItemTake_Source")
    record.source = source
    return true
  end

  function api.Undo_BeginBlock()
    undo_depth = undo_depth + 1
    table.insert(state.undo, { event = "begin" })
  end
  function api.Undo_EndBlock(description, flags)
    check(undo_depth > 0, "Undo_EndBlock without Undo_BeginBlock")
    check(type(description) == "string" and math.type(flags) == "integer",
      "Undo_EndBlock(string descchange, integer extraflags)")
    undo_depth = undo_depth - 1
    table.insert(state.undo, { event = "end", description = description, flags = flags })
  end
  function api.PreventUIRefresh(n)
    check(math.type(n) == "integer", "PreventUIRefresh(integer)")
    state.refresh_prevented = state.refresh_prevented + n
  end
  function api.UpdateArrange() end
  function api.ShowMessageBox(message, title, kind)
    check(type(message) == "string" and type(title) == "string" and kind == 0, "ShowMessageBox(msg, title, 0)")
    table.insert(state.messages, message)
    return 1
  end
  function api.GetUserInputs(title, count, captions, values)
    check(type(title) == "string" and math.type(count) == "integer" and type(captions) == "string"
      and type(values) == "string", "GetUserInputs(title, num_inputs, captions_csv, retvals_csv)")
    state.asked = { title = title, count = count, captions = captions }
    if scenario.answer == nil then return false, values end
    return true, scenario.answer
  end

  function api.ExecProcess(cmd, timeout)
    check(type(cmd) == "string" and (timeout == -1 or timeout == -2),
      "ExecProcess(cmdline, -1): the actions must not wait")
    local argv = scenario.os:match("^Win") and Fake.split_windows(cmd) or Fake.split_unix(cmd)
    local exec = { cmd = cmd, timeout = timeout, argv = argv, job = read_file(argv[#argv]) }
    table.insert(state.execs, exec)
    if read_file(argv[1]) == nil then return nil end
    local words = {}
    for i, arg in ipairs(argv) do words[i] = sh_quote(arg) end
    os.execute(table.concat(words, " ") .. " >>" .. sh_quote(scenario.process_log) .. " 2>&1 &")
    if scenario.on_exec == "delete first track" then
      table.remove(state.tracks, 1)
    elseif scenario.on_exec == "switch project" then
      project = setmetatable({}, handle_mt)
      records[project] = { kind = "ReaProject" }
    end
    return ""
  end
  function api.defer(fn)
    check(type(fn) == "function", "defer(function)")
    queue[#queue + 1] = fn
  end

  local reaper = setmetatable({}, {
    __index = function(_, name)
      local fn = api[name]
      if not fn then error("the fake REAPER has no reaper." .. tostring(name), 2) end
      return function(...)
        table.insert(state.calls, name)
        return fn(...)
      end
    end,
    __newindex = function() error("the actions must not change the reaper table", 2) end,
  })

  -- Run deferred callbacks, one REAPER cycle (`step` real seconds, `step * clock_speed` on the
  -- fake clock) at a time, until none remain or `limit` real seconds have passed.
  local function run_deferred(step, limit)
    local waited = 0
    while #queue > 0 do
      if waited > limit then state.timed_out = true return end
      local batch = queue
      queue = {}
      for _, fn in ipairs(batch) do fn() end
      if #queue > 0 then
        os.execute("sleep " .. step)
        waited = waited + step
        clock = clock + step * (scenario.clock_speed or 1)
      end
    end
  end

  -- The model as plain tables, for the test to read.
  local function snapshot()
    local tracks = {}
    for i, track in ipairs(state.tracks) do
      local t = records[track]
      local items = {}
      for j, item in ipairs(t.items) do
        local it = records[item]
        local takes = {}
        for k, take in ipairs(it.takes) do
          local tk = records[take]
          takes[k] = {
            name = tk.name, startoffs = tk.startoffs, playrate = tk.playrate, pitch = tk.pitch, ppitch = tk.ppitch,
            file = tk.source and records[tk.source].file or nil,
          }
        end
        items[j] = { position = it.position, length = it.length, loop = it.loop, takes = takes }
      end
      tracks[i] = { name = t.name, items = items }
    end
    return tracks
  end

  return reaper, state, run_deferred, snapshot
end

return Fake
