"""What clapsep guarantees about files: the README's examples touch only their own stems, bad
samples and full disks fail cleanly, outputs never collide, stems are tagged and get normal
permissions, killed jobs leave nothing behind for long, and nothing waits on the model that a
cheap check could have refused. Commands run as a user runs them: ``python -m clapsep_cli``."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from clapsep_cli.audio.atomic import TempFile, file_lock, lock_of
from clapsep_cli.audio.reader import INTEGER_SUBTYPES, is_stem, probe, read_blocks
from clapsep_cli.models import install
from clapsep_cli.network.architecture import TINY
from tests.helpers import Artefacts, tone, write_audio

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def clapsep(*args: object, cwd: Path | None = None, umask: int | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "clapsep_cli", *map(str, args)], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=timeout,
                          preexec_fn=None if umask is None else (lambda: os.umask(umask)))


def snapshot(folder: Path) -> dict[Path, str]:
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


# --- the README's examples -------------------------------------------------------------------

def readme_examples() -> list[str]:
    text = README.read_text(encoding="utf-8")
    first = text.split("```\n", 2)[1].splitlines()[0]
    block = text.split("Examples:\n\n```\n", 1)[1].split("```", 1)[0]
    return [first, *(line for line in block.splitlines() if line.strip())]


@pytest.fixture
def workfolder(tmp_path: Path) -> Path:
    """The files the README's examples name, and bystanders that must stay untouched."""
    folder = tmp_path / "work"
    (folder / "interviews" / "day2").mkdir(parents=True)
    write_audio(folder / "walk.wav", tone(3.0, 32000), 32000, subtype="PCM_16")
    write_audio(folder / "take.flac", tone(2.0, 44100, channels=2), 44100, subtype="PCM_24", format="FLAC")
    write_audio(folder / "ref.wav", tone(16.0, 16000, freq=300), 16000, subtype="PCM_16")
    write_audio(folder / "mix.wav", tone(2.5, 48000, channels=2, seed=3), 48000)
    write_audio(folder / "podcast.wav", tone(2.0, 22050, seed=4), 22050, subtype="PCM_16")
    write_audio(folder / "interviews" / "anna.wav", tone(2.0, 32000, seed=5), 32000, subtype="PCM_16")
    write_audio(folder / "interviews" / "day2" / "ben.flac", tone(1.5, 32000, seed=6), 32000, subtype="PCM_16",
                format="FLAC")
    write_audio(folder / "bystander.wav", tone(1.0, 32000, seed=7), 32000)
    write_audio(folder / "bystander.ogg", tone(1.0, 32000, seed=8), 32000, subtype="VORBIS", format="OGG")
    return folder


@pytest.mark.parametrize("command", readme_examples())
def test_readme_examples_touch_only_their_own_stems(home: Path, workfolder: Path, command: str) -> None:
    argv = shlex.split(command, comments=True)
    assert argv[0] == "clapsep"
    comment = command.partition("#")[2]
    before = snapshot(workfolder)
    result = clapsep(*argv[1:], cwd=workfolder)
    assert result.returncode == 0, result.stderr
    after = snapshot(workfolder)
    assert {p: d for p, d in after.items() if p in before} == before  # nothing that existed changed
    new = sorted(set(after) - set(before))
    clips = {argv[i + 1] for i, a in enumerate(argv) if a in ("--query-audio", "--negative-audio")}
    named = [Path(a) for a in argv[2:] if a and a not in clips and (workfolder / a).exists()]
    inputs = [p for n in named for p in ([q for q in before if q.is_relative_to(n)] if (workfolder / n).is_dir()
                                         else [n])]
    per_input = 2 if "--residual" in argv else 1
    assert len(new) == per_input * len(inputs), (new, inputs)
    for source in inputs:
        mine = [p for p in new if p.parent == source.parent and p.name.startswith(source.stem + ".")]
        assert len(mine) == per_input, (source, new)
    assert all(is_stem(workfolder / p) for p in new)
    promised = [Path(name) for name in re.findall(r"[\w.]+\.wav", comment) if Path(name) not in before]
    assert all(p in new for p in promised), (promised, new)  # "writes walk.dog_barking.wav"


# --- 1. an empty QUERY is never a path --------------------------------------------------------

def test_empty_argument_is_not_the_current_folder(home: Path, workfolder: Path) -> None:
    before = snapshot(workfolder)
    result = clapsep("extract", "dog", "", cwd=workfolder)  # an empty FILE
    assert result.returncode == 1 and len(error_lines(result)) == 1
    assert "empty file name" in result.stderr
    assert snapshot(workfolder) == before


# --- 2. non-finite samples ---------------------------------------------------------------------

@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_non_finite_samples_are_refused_naming_the_first(home: Path, tmp_path: Path, bad: float) -> None:
    data = tone(3.0, 32000, channels=2)
    data[40000:40010, 1] = bad
    src = write_audio(tmp_path / "bad.wav", data, 32000, subtype="FLOAT")
    result = clapsep("extract", "dog", src)
    assert result.returncode == 1
    [line] = error_lines(result)
    assert "bad.wav: sample 40000 (1.250 s), channel 2" in line and "not a finite number" in line
    assert "silence" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.wav"]  # no stem, no temporary file


def test_integer_subtypes_skip_the_check_because_they_cannot_hold_non_finite_samples(tmp_path: Path) -> None:
    """The finiteness check is skipped for integer codes: every code decodes to a finite sample.
    Each file is written from every 16-bit value (all the codes of 8- and 16-bit subtypes; not
    from inf or NaN, whose conversion to a code is undefined: libsndfile's u-law and A-law
    writers crash on them)."""
    assert INTEGER_SUBTYPES <= set(sf.available_subtypes())
    data = np.arange(-32768, 32768, dtype=np.int16)
    for subtype in ("PCM_U8", "PCM_16", "PCM_24", "PCM_32", "ULAW", "ALAW", "IMA_ADPCM", "MS_ADPCM", "GSM610"):
        if subtype not in INTEGER_SUBTYPES or not sf.check_format("WAV", subtype):
            continue
        path = tmp_path / f"{subtype}.wav"
        sf.write(str(path), data, 8000, subtype=subtype, format="WAV")
        info = probe(path)
        assert info.subtype == subtype
        assert all(np.isfinite(block).all() for block in read_blocks(info)), subtype


def test_a_codec_that_cannot_seek_is_read_from_any_offset(tmp_path: Path) -> None:
    """GSM 6.10 WAVs refuse every seek, even to 0; a region is read up to instead."""
    path = tmp_path / "gsm.wav"
    sf.write(str(path), tone(1.0, 8000)[:, 0], 8000, subtype="GSM610", format="WAV")
    info = probe(path)
    whole = np.concatenate(list(read_blocks(info, block=1000)))
    part = np.concatenate(list(read_blocks(info, 2345, 7000, block=1000)))
    assert len(whole) == info.frames and np.array_equal(part, whole[2345:7000])


# --- 3. a full disk ----------------------------------------------------------------------------

def test_disk_full_fails_that_file_cleanly_and_the_batch_goes_on(home: Path, tmp_path: Path,
                                                                  full_disk: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    write_audio(src / "a_big.wav", tone(2.0, 48000, channels=2), 48000)  # a 768 KB float stem: does not fit
    write_audio(src / "b_small.wav", tone(0.5, 16000), 16000)  # 32 KB: fits once a_big's temp file is gone
    write_audio(src / "c_big.wav", tone(2.0, 48000, channels=2, seed=2), 48000)
    report = tmp_path / "report.json"
    result = clapsep("extract", "dog", src, "--out-dir", full_disk, "--report", report)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert error_lines(result) == [
        "clapsep: 2 of 3 files failed:",
        f"  {full_disk / 'a_big.dog.wav'}: cannot write (No space left on device)",
        f"  {full_disk / 'c_big.dog.wav'}: cannot write (No space left on device)"]
    assert sorted(p.name for p in full_disk.iterdir()) == ["b_small.dog.wav"]  # no temporary file left
    assert sf.info(str(full_disk / "b_small.dog.wav")).frames == 8000
    data = json.loads(report.read_text())
    assert [r["status"] for r in data["results"]] == ["failed", "ok", "failed"] and data["failed"] == 2


def test_a_report_that_cannot_be_written_costs_one_line(home: Path, tmp_path: Path, full_disk: Path) -> None:
    fd = os.open(full_disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:  # fill the disk to the last block
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    src = write_audio(tmp_path / "walk.wav", tone(1.0, 16000), 16000)
    result = clapsep("extract", "dog", src, "--report", full_disk / "deep" / "report.json")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert [line for line in error_lines(result) if "report" in line] == [
        f"clapsep: warning: {full_disk / 'deep' / 'report.json'}: cannot write the report (No space left on device)"]
    assert not [p for p in full_disk.rglob("*") if p.name.endswith(".part")]


# --- 4. two inputs, one output -----------------------------------------------------------------

def test_two_inputs_that_would_write_one_stem_are_refused_before_anything(home: Path, tmp_path: Path) -> None:
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    folder = tmp_path / "walks"
    folder.mkdir()
    write_audio(folder / "walk.wav", tone(2.0, 44100), 44100, subtype="PCM_16")
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(folder / "walk.wav"), str(folder / "walk.m4a")], check=True)
    before = snapshot(folder)
    result = clapsep("extract", "dog barking", folder)
    assert result.returncode == 1
    [line] = error_lines(result)
    assert f"{folder / 'walk.m4a'} and {folder / 'walk.wav'} would both write {folder / 'walk.dog_barking.wav'}" \
        in line and "{name}.{query}.{ext}" in line
    assert snapshot(folder) == before
    ok = clapsep("extract", "dog barking", folder, "--name", "{name}.{query}.{ext}")  # the suggested fix
    assert ok.returncode == 0, ok.stderr
    assert {"walk.m4a.dog_barking.wav", "walk.wav.dog_barking.wav"} <= {p.name for p in folder.iterdir()}


def test_one_name_for_two_inputs_is_refused_even_with_overwrite(home: Path, tmp_path: Path) -> None:
    a = write_audio(tmp_path / "a.wav", tone(1.0, 32000), 32000)
    b = write_audio(tmp_path / "b.wav", tone(1.0, 32000, seed=1), 32000)
    (tmp_path / "same.wav").write_bytes(b"keep me")
    result = clapsep("extract", "dog", a, b, "--name", "same.{ext}", "--overwrite")
    assert result.returncode == 1 and "would both write" in result.stderr
    assert (tmp_path / "same.wav").read_bytes() == b"keep me"
    onto_input = clapsep("extract", "dog", a, b, "--name", "b.{ext}", "--overwrite")
    assert onto_input.returncode == 1 and f"{b}: is also an input of this job" in onto_input.stderr


def test_a_stem_is_never_written_over_another_input(home: Path, tmp_path: Path) -> None:
    a = write_audio(tmp_path / "a.wav", tone(1.0, 32000), 32000)
    b = write_audio(tmp_path / "a.dog.wav", tone(1.0, 32000, seed=1), 32000)
    before = snapshot(tmp_path)
    result = clapsep("extract", "dog", a, b, "--overwrite")
    assert result.returncode == 1 and f"{b}: is also an input of this job" in result.stderr
    assert snapshot(tmp_path) == before


# --- 5. permissions ----------------------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_stems_get_the_permissions_of_any_new_file(home: Path, tmp_path: Path, umask: int) -> None:
    src = write_audio(tmp_path / "walk.wav", tone(1.0, 32000), 32000)
    result = clapsep("extract", "dog", src, "--residual", "--clip", "rescale", "--bit-depth", "16", umask=umask)
    assert result.returncode == 0, result.stderr
    for stem in ("walk.dog.wav", "walk.dog.residual.wav"):
        assert stat.S_IMODE((tmp_path / stem).stat().st_mode) == 0o666 & ~umask


def test_installed_models_get_normal_permissions(empty_home: Path, tiny_files: Artefacts) -> None:
    old = os.umask(0o022)
    try:
        model = install.install("perm", tiny_files.clap, tiny_files.layouts[1], tiny_files.tokenizer, config=TINY)
    finally:
        os.umask(old)
    assert stat.S_IMODE(model.path.stat().st_mode) == 0o755
    for entry in model.path.rglob("*"):
        assert stat.S_IMODE(entry.stat().st_mode) == (0o755 if entry.is_dir() else 0o644), entry


# --- 6. stems are tagged and left out of folder scans ------------------------------------------

@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg", "mp3", "aiff"])
def test_every_stem_format_carries_the_tag(home: Path, tmp_path: Path, fmt: str) -> None:
    src = write_audio(tmp_path / "walk.wav", tone(1.0, 32000), 32000)
    result = clapsep("extract", "dog", src, "--format", fmt, "--residual")
    assert result.returncode == 0, result.stderr
    assert is_stem(tmp_path / f"walk.dog.{fmt}") and is_stem(tmp_path / f"walk.dog.residual.{fmt}")
    assert not is_stem(src)


def test_rescanning_with_another_query_leaves_earlier_stems_alone(home: Path, tmp_path: Path) -> None:
    folder = tmp_path / "takes"
    folder.mkdir()
    write_audio(folder / "a.wav", tone(2.0, 32000), 32000, subtype="PCM_16")
    write_audio(tmp_path / "ref.wav", tone(2.0, 32000, freq=900), 32000, subtype="PCM_16")
    assert clapsep("extract", "dialogue", folder).returncode == 0
    again = clapsep("extract", "--query-audio", tmp_path / "ref.wav", "", folder, "--json")
    assert again.returncode == 0, again.stderr
    data = json.loads(again.stdout)
    assert [Path(r["input"]).name for r in data["results"]] == ["a.wav"]
    assert [Path(p).name for p in data["stems_left_out"]] == ["a.dialogue.wav"]
    assert sorted(p.name for p in folder.iterdir()) == ["a.dialogue.wav", "a.like_ref.wav", "a.wav"]
    named = clapsep("extract", "speech", folder / "a.dialogue.wav")  # a file named directly is always taken
    assert named.returncode == 0 and (folder / "a.dialogue.speech.wav").exists()
    included = clapsep("extract", "wind", folder, "--include-stems", "--json")
    assert included.returncode == 0, included.stderr
    assert len(json.loads(included.stdout)["results"]) == 4


# --- 7. leftovers of a killed job --------------------------------------------------------------

def test_temp_files_of_a_killed_job_are_removed_by_the_next_run(home: Path, tmp_path: Path) -> None:
    src = write_audio(tmp_path / "long.wav", tone(900.0, 16000), 16000, subtype="PCM_16")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    job = subprocess.Popen([sys.executable, "-m", "clapsep_cli", "extract", "dog", str(src)], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    parts: list[Path] = []
    while not parts and job.poll() is None and time.monotonic() < deadline:
        parts = [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
        time.sleep(0.01)
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert parts and all(p.exists() for p in parts), "the job ended before it wrote anything"
    live = TempFile(tmp_path / "long.dog.wav")  # owned by this (live) process
    locked = tmp_path / f".long.dog.wav.clapsep-{job.pid}-elsewhere.part"  # dead pid here, locked elsewhere
    locked.write_bytes(b"x")
    holder = file_lock(lock_of(locked))  # its writer's lock, held here
    holder.acquire()
    foreign = tmp_path / ".long.dog.wav.1234.part"  # not ours
    foreign.write_bytes(b"y")
    try:
        result = clapsep("extract", "dog", src, "--end", "1")
        assert result.returncode == 0, result.stderr
        assert not any(p.exists() for p in parts)
        assert live.path.exists() and locked.exists() and foreign.exists()
    finally:
        holder.release()
        live.discard()


# --- 8 (and issue 9's item 3). cheap checks before the model ------------------------------------

def test_a_typo_is_reported_before_anything_about_models(empty_home: Path, tmp_path: Path) -> None:
    for command in (["extract", "dog barking", "nothere.wav"], ["remove", "wind", "nothere.wav"],
                    ["extract", "--query-audio", "noref.wav", "", "nothere.wav"]):
        result = clapsep(*command, cwd=tmp_path)
        assert result.returncode == 1
        [line] = error_lines(result)
        assert "no such file" in line and "model" not in line, line
    write_audio(tmp_path / "here.wav", tone(1.0, 32000), 32000)
    clip = clapsep("extract", "--query-audio", "noref.wav", "", "here.wav", cwd=tmp_path)
    assert clip.returncode == 1 and "noref.wav: no such file" in clip.stderr and "model" not in clip.stderr


def test_a_rerun_with_every_stem_present_needs_no_model(tiny_store: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "takes"
    folder.mkdir()
    for i in range(2):
        write_audio(folder / f"t{i}.wav", tone(1.0, 32000, seed=i), 32000)
    monkeypatch.setenv("CLAPSEP_HOME", str(tiny_store))
    assert clapsep("extract", "dog", folder).returncode == 0
    monkeypatch.setenv("CLAPSEP_HOME", str(tmp_path / "no-models-here"))
    rerun = clapsep("extract", "dog", folder, "--json")
    assert rerun.returncode == 0, rerun.stderr
    data = json.loads(rerun.stdout)
    assert [r["status"] for r in data["results"]] == ["skipped", "skipped"] and data["model_loaded"] is False


# --- 9. evaluate ---------------------------------------------------------------------------------

def test_evaluate_fails_when_no_row_scores_without_loading_a_model(empty_home: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "pairs.csv"
    manifest.write_text("mixture_file,target_file,positive_caption\nm.wav,t.wav,dog\nm2.wav,t2.wav,rain\n")
    result = clapsep("evaluate", manifest, "--audio-dir", tmp_path)
    assert result.returncode == 1
    assert error_lines(result)[-1].startswith("clapsep: error: none of the 2 rows could be scored")
    assert "no such file" in result.stderr and "model" not in result.stderr


def test_evaluate_warns_about_a_target_that_does_not_match_its_mixture(home: Path, tmp_path: Path) -> None:
    write_audio(tmp_path / "m.wav", tone(3.0, 44100, channels=2), 44100)
    write_audio(tmp_path / "t.wav", tone(2.0, 48000), 48000)
    write_audio(tmp_path / "m2.wav", tone(2.0, 32000, seed=1), 32000)
    write_audio(tmp_path / "t2.wav", tone(2.0, 32000, seed=2), 32000)
    manifest = tmp_path / "pairs.csv"
    manifest.write_text("mixture_file,target_file,positive_caption\nm.wav,t.wav,dog\nm2.wav,t2.wav,rain\n")
    result = clapsep("evaluate", manifest, "--audio-dir", tmp_path, "--json")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in error_lines(result) if line.startswith("warning:")]
    assert warnings == ["warning: row 0: target differs from mixture: length 2.000 s vs 3.000 s, rate 48000 vs "
                        "44100 Hz, 1 vs 2 channels (scored in mono at 32 kHz on the common length)"]
    assert json.loads(result.stdout)["warnings"] == [warnings[0].removeprefix("warning: ")]


def test_evaluate_json_with_one_row_is_strict_json(home: Path, tmp_path: Path) -> None:
    write_audio(tmp_path / "m.wav", tone(2.0, 32000), 32000)
    write_audio(tmp_path / "t.wav", tone(2.0, 32000, seed=1), 32000)
    manifest = tmp_path / "pairs.csv"
    manifest.write_text("mixture_file,target_file,positive_caption\nm.wav,t.wav,dog\n")
    result = clapsep("evaluate", manifest, "--audio-dir", tmp_path, "--json")
    assert result.returncode == 0, result.stderr

    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    data = json.loads(result.stdout, parse_constant=refuse)
    assert data["scores"]["positive_only"]["sdri_std"] is None
    assert isinstance(data["scores"]["positive_only"]["sdri_mean"], float)
