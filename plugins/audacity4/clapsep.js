// clapsep's Audacity 4 extension: extract, remove or find a described sound in the selection.
//
// `clapsep audacity install` writes this file into Audacity 4's extensions folder with CONFIG filled in
// (the clapsep it runs, and one entry per menu item of manifest.json), beside the native library it
// builds from native/clapsep_audacity4.c (platform/linux/x86_64/clapsep.so).
//
// Each menu item is an extension effect: Audacity calls process(settings, session, task) on its UI
// thread. process() reads the selected range of each selected track into a job folder (through the
// native library, which writes raw float32 frames), then starts `clapsep audacity job FOLDER` on a
// native worker thread and returns that Promise; Audacity shows its progress dialog meanwhile and
// calls poll(task) every 50 ms (progress, and Cancel, which stops clapsep). When clapsep is done the
// stems (or the labels of a find) are staged in the project edit begun in process() and committed:
// Audacity applies them when the Promise resolves, as one undo step. A failure rejects the Promise
// with clapsep's one-line message, and the edit, never committed, changes nothing.

var CONFIG = {/* CONFIG */};

var CHUNK = 65536; // Audacity's largest audio chunk (AUDIO_CHUNK_SAMPLES)
var VERBS = { extract: "Extracting", remove: "Removing", find: "Finding" };

function openLibrary() {
    var library = require("MuseApi.Native").open("clapsep");
    if (!library) {
        throw new Error("clapsep: its native library did not load (run `clapsep audacity install` again)");
    }
    return library;
}

function channelsOf(chunk) {
    var list = chunk.channels;
    var result = [];
    for (var i = 0; i < list.length; ++i) {
        result.push(list[i]);
    }
    return result;
}

// Each selected track's selected range into folder/in<N>.f32; the job's inputs.
function readSelection(library, selection, start, end, folder) {
    var tracks = selection.audioTracks;
    var inputs = [];
    for (var i = 0; i < tracks.length; ++i) {
        var track = tracks[i];
        var rate = track.sampleRate;
        var channels = track.channelCount;
        var reader = track.openReader({ channelCount: channels, sampleRate: rate, start: start, end: end });
        var file = library.dispatch("raw_create", [folder + "/in" + i + ".f32"]);
        var frames = 0;
        try {
            for (;;) {
                var chunk = reader.read();
                if (!chunk) {
                    break;
                }
                frames += library.dispatch("raw_write", [file].concat(channelsOf(chunk)));
                chunk.release();
            }
        } finally {
            library.dispatch("raw_close", [file]);
        }
        inputs.push({ track: track.name, file: "in" + i + ".f32", channels: channels, rate: rate, frames: frames,
                      source: track });
    }
    return inputs;
}

// One output of the job (raw frames in the folder) as a staged audio writer.
function stageAudio(library, edit, folder, output) {
    var writer = edit.createAudioWriter({ channelCount: output.channels, sampleRate: output.rate });
    var file = library.dispatch("raw_open", [folder + "/" + output.file, output.channels]);
    try {
        for (var left = output.frames; left > 0; left -= CHUNK) {
            var chunk = writer.createChunk(Math.min(left, CHUNK));
            library.dispatch("raw_read", [file].concat(channelsOf(chunk)));
            writer.write(chunk);
        }
    } finally {
        library.dispatch("raw_close", [file]);
    }
    return writer;
}

function place(library, edit, job, inputs, folder, result) {
    if (job.kind === "find") {
        if (result.events.length === 0) {
            throw "clapsep: no " + result.tag + " found in the selection (try a lower threshold)";
        }
        var labels = edit.createLabelTrack("find: " + result.tag);
        for (var e = 0; e < result.events.length; ++e) {
            var event = result.events[e];
            var label = result.tag + " " + event.confidence.toFixed(2);
            if (inputs.length > 1) {
                label += " (" + inputs[event.input].track + ")";
            }
            labels.addLabel(inputs[event.input].t0 + event.start, inputs[event.input].t0 + event.end, label);
        }
        return;
    }
    for (var t = 0; t < result.tracks.length; ++t) {
        var output = result.tracks[t];
        var input = inputs[output.input];
        var writer = stageAudio(library, edit, folder, output);
        if (job.kind === "remove") {
            writer.replace(input.source, input.t0, input.t0 + output.frames / output.rate);
        } else {
            writer.addTrack(output.name, input.t0);
        }
    }
}

function makeEffect(entry) {
    var library = null;
    return {
        parameters: function () {
            var result = [];
            if (entry.ask) {
                result.push({ id: "query", name: "Sound", type: "string", defaultValue: "",
                              description: "Describe the sound, e.g. dog barking" });
            }
            if (entry.kind === "find") {
                result.push({ id: "threshold", name: "Threshold", type: "double", defaultValue: CONFIG.threshold,
                              min: 0.01, max: 0.99, step: 0.01,
                              description: "The share of a 20 ms frame's energy that is the sound" });
            }
            return result;
        },
        validate: function (settings) {
            if (entry.ask && !String(settings.query || "").trim()) {
                return "Describe the sound first";
            }
            return true;
        },
        process: function (settings, session, task) {
            library = openLibrary();
            var query = entry.ask ? String(settings.query || "").trim() : null;
            var title = "clapsep: " + entry.kind + " " + (query || entry.preset);
            var edit = require("Audacity.Project").beginEdit(title, session);
            var selection = edit.selection;
            var start = selection.start;
            var end = selection.end;
            if (!(end > start)) {
                throw new Error("clapsep: select a time range first");
            }
            if (selection.audioTracks.length === 0) {
                throw new Error("clapsep: select the audio track(s) to use");
            }
            var folder = library.dispatch("job_folder", []);
            var ran = library;
            var inputs;
            var job;
            try {
                inputs = readSelection(library, selection, start, end, folder);
                job = { version: 1, kind: entry.kind, query: query, preset: entry.preset || null, start: start, end: end,
                        threshold: entry.kind === "find" ? Number(settings.threshold) : null,
                        inputs: inputs.map(function (input) {
                            return { track: input.track, file: input.file, channels: input.channels,
                                     rate: input.rate, frames: input.frames };
                        }) };
                for (var i = 0; i < inputs.length; ++i) {
                    // The first sample read is the one at round(start * rate): the stem starts exactly there.
                    inputs[i].t0 = Math.round(start * inputs[i].rate) / inputs[i].rate;
                }
                library.dispatch("write_text", [folder + "/job.json", JSON.stringify(job)]);
            } catch (error) {
                library.dispatch("remove_folder", [folder]);
                throw error;
            }
            var argv = [folder + "/job.log"].concat(CONFIG.command, [folder]);
            // A rejection is a string, not an Error: Audacity shows a rejected Error's stack too.
            return library.dispatchWorker("run", argv).then(function () {
                try {
                    var result = JSON.parse(ran.dispatch("read_text", [folder + "/result.json"]));
                    place(ran, edit, job, inputs, folder, result);
                    edit.commit();
                } catch (error) {
                    throw error instanceof Error ? "clapsep: " + error.message : String(error);
                } finally {
                    ran.dispatch("remove_folder", [folder]);
                }
                return true;
            }, function (error) {
                ran.dispatch("remove_folder", [folder]);
                throw String(error).replace(/^Error: /, "");
            });
        },
        poll: function (task) {
            if (!library) {
                return;
            }
            if (task.cancelled) {
                library.dispatch("cancel", []);
                return;
            }
            var text = library.dispatch("progress_text", []);
            task.report(library.dispatch("progress", []), text || VERBS[entry.kind]);
        }
    };
}

CONFIG.effects.forEach(function (entry) {
    exports[entry.factory] = function () {
        return makeEffect(entry);
    };
});
