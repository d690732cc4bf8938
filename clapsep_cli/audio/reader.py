"""Reading sources: probing, block-wise decoding (libsndfile, else ffmpeg on a pipe), whole short clips."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf

from clapsep_cli.audio.region import check_window
from clapsep_cli.errors import AudioError

if TYPE_CHECKING:  # torch-free at import: planning a job (and a service client) needs no torch
    import torch

BLOCK = 1 << 16
STEM_MARK = "clapsep stem"  # the start of the comment tag of every stem clapsep writes


@dataclass(frozen=True)
class AudioInfo:
    """What a source file holds. ``frames`` is exact for libsndfile, and for ffmpeg when the
    stream states its length in samples (mp4/m4a do; decoding then yields encoder padding past
    it, which is dropped); otherwise an estimate (``exact`` False)."""

    path: Path
    rate: int
    channels: int
    frames: int
    container: str | None  # libsndfile major format ("WAV", "FLAC", ...) or None (ffmpeg)
    subtype: str | None
    exact: bool = True

    @property
    def duration(self) -> float:
        return self.frames / self.rate


def _ffmpeg() -> str | None:
    from pydub.utils import get_encoder_name

    name = get_encoder_name()
    return shutil.which(name)


def probe(path: Path) -> AudioInfo:
    """Describe ``path`` or raise :class:`AudioError` with one clear line."""
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    try:
        info = sf.info(str(path))
        result = AudioInfo(path, int(info.samplerate), int(info.channels), int(info.frames), info.format, info.subtype)
    except (sf.LibsndfileError, RuntimeError):
        result = _probe_ffmpeg(path)
    except OSError as err:
        raise AudioError(f"{path}: cannot read ({err.strerror or err})") from None
    if result.frames <= 0:
        raise AudioError(f"{path}: contains no audio (0 samples)")
    if result.channels <= 0 or result.rate <= 0:
        raise AudioError(f"{path}: not a usable audio stream")
    return result


def _probe_ffmpeg(path: Path) -> AudioInfo:
    from pydub.utils import mediainfo_json

    if _ffmpeg() is None:
        raise AudioError(f"{path}: not an audio format libsndfile reads (install ffmpeg for mp4/m4a/aac and more)")
    try:
        info = mediainfo_json(str(path))
    except Exception:  # noqa: BLE001 - pydub raises bare exceptions for unreadable input
        info = {}
    streams = [s for s in info.get("streams", []) if s.get("codec_type") == "audio"]
    if not streams:
        raise AudioError(f"{path}: not an audio file")
    stream = streams[0]
    rate, channels = int(stream.get("sample_rate", 0) or 0), int(stream.get("channels", 0) or 0)
    if stream.get("time_base") == f"1/{rate}" and str(stream.get("duration_ts", "")).isdigit():
        return AudioInfo(path, rate, channels, int(stream["duration_ts"]), None, None, exact=True)
    duration = float(stream.get("duration") or info.get("format", {}).get("duration") or 0.0)
    return AudioInfo(path, rate, channels, int(round(duration * rate)), None, None, exact=False)


def is_stem(path: Path) -> bool:
    """Whether ``path`` carries the tag clapsep puts in every stem it writes."""
    try:
        with sf.SoundFile(str(path)) as f:
            return f.comment.startswith(STEM_MARK)
    except (sf.LibsndfileError, RuntimeError, OSError):
        return False


def peak(block: np.ndarray) -> float:
    """The largest absolute sample of ``block``: two reductions, without an ``abs`` copy."""
    return max(float(block.max()), -float(block.min()))


# libsndfile subtypes that store integer codes (PCM, companded, ADPCM): no NaN or infinity.
INTEGER_SUBTYPES = frozenset({"PCM_S8", "PCM_U8", "PCM_16", "PCM_24", "PCM_32", "ULAW", "ALAW", "IMA_ADPCM",
                              "MS_ADPCM", "VOX_ADPCM", "GSM610", "G721_32", "G723_24", "G723_40", "DWVW_12",
                              "DWVW_16", "DWVW_24", "DPCM_8", "DPCM_16", "NMS_ADPCM_16", "NMS_ADPCM_24",
                              "NMS_ADPCM_32", "ALAC_16", "ALAC_20", "ALAC_24", "ALAC_32"})


def first_non_finite(block: np.ndarray) -> tuple[int, int] | None:
    """``(frame, channel)`` of the first NaN or infinite sample of ``block`` (frames, channels), or None."""
    bad = ~np.isfinite(block)
    if not bad.any():
        return None
    frame, channel = np.argwhere(bad)[0]
    return int(frame), int(channel)


def _finite(path: Path, rate: int, start: int, blocks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """Pass blocks through, refusing the first NaN or infinite sample with one line saying where."""
    position = start
    for data in blocks:
        found = first_non_finite(data)
        if found is not None:
            frame, channel = found
            at = position + frame
            raise AudioError(f"{path}: sample {at} ({at / rate:.3f} s), channel {channel + 1}, is "
                             f"{data[frame, channel]} (not a finite number); repair the file first")
        position += len(data)
        yield data


def read_blocks(info: AudioInfo, start: int = 0, stop: int | None = None, block: int = BLOCK) -> Iterator[np.ndarray]:
    """Float32 blocks (n, channels) of frames [start, stop) of the source (``None``: to its end,
    the exact length where known); a NaN or infinite sample raises :class:`AudioError`."""
    if stop is None and info.exact:
        stop = info.frames
    if info.container is None:
        blocks = _ffmpeg_blocks(info, start, stop, block)
    else:
        blocks = _sf_blocks(info, start, info.frames if stop is None else stop, block)
    if info.subtype in INTEGER_SUBTYPES:  # every integer code decodes to a finite number
        yield from blocks
    else:
        yield from _finite(info.path, info.rate, start, blocks)


def _sf_blocks(info: AudioInfo, start: int, stop: int, block: int) -> Iterator[np.ndarray]:
    with sf.SoundFile(str(info.path)) as f:
        if start and f.seekable():
            f.seek(start)
        else:  # some codecs (GSM 6.10) cannot seek, not even to 0: read up to the start instead
            for _ in f.blocks(blocksize=block, frames=start, dtype="float32"):
                pass
        remaining = stop - start
        while remaining > 0:
            data = f.read(min(block, remaining), dtype="float32", always_2d=True)
            if len(data) == 0:
                break
            remaining -= len(data)
            yield data


def _ffmpeg_blocks(info: AudioInfo, start: int, stop: int | None, block: int) -> Iterator[np.ndarray]:
    """Decode with ffmpeg to float32 PCM on a pipe, yielding frames [start, stop)."""
    ffmpeg = _ffmpeg()
    assert ffmpeg is not None
    cmd = [ffmpeg, "-nostdin", "-v", "error", "-i", str(info.path), "-map", "0:a:0", "-f", "f32le",
           "-acodec", "pcm_f32le", "-ac", str(info.channels), "-ar", str(info.rate), "-"]
    frame_bytes = 4 * info.channels
    end = stop if stop is not None else 1 << 62
    with tempfile.TemporaryFile() as errors, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors) as proc:
        assert proc.stdout is not None
        position = 0
        at_eof = False
        try:
            while position < end:
                raw = proc.stdout.read(block * frame_bytes)
                if not raw:
                    at_eof = True
                    break
                data = np.frombuffer(raw[: len(raw) - len(raw) % frame_bytes], dtype="<f4").reshape(-1, info.channels)
                lo, hi = max(start - position, 0), min(end - position, len(data))
                position += len(data)
                if hi > lo:
                    yield np.array(data[lo:hi], dtype=np.float32)
        finally:
            if not at_eof and proc.poll() is None:
                proc.kill()  # stopped early: the region ended, or the consumer went away
        if at_eof and proc.wait() != 0:
            errors.seek(0)
            lines = errors.read().decode(errors="replace").strip().splitlines()
            raise AudioError(f"{info.path}: ffmpeg could not decode it ({lines[-1] if lines else 'unknown error'})")


def read(path: Path, start: float = 0.0, end: float | None = None) -> tuple[np.ndarray, int]:
    """A whole (short) file or region as float32 (n, channels) and its rate; for query clips."""
    check_window(start, end)
    info = probe(path)
    first = int(round(start * info.rate))
    last = info.frames if end is None else min(int(round(end * info.rate)), info.frames)
    if first >= last:
        raise AudioError(f"{path}: region {start}-{end} s lies outside the file ({info.duration:.3f} s)")
    blocks = list(read_blocks(info, first, last))
    data = np.concatenate(blocks) if blocks else np.zeros((0, info.channels), np.float32)
    if len(data) == 0:
        raise AudioError(f"{path}: contains no audio")
    return data, info.rate


def read_mono(path: Path, rate: int, start: float = 0.0, end: float | None = None) -> torch.Tensor:
    """A (short) file or region as a mono downmix at ``rate`` (for query clips and evaluation)."""
    import torch

    from clapsep_cli.audio.dsp import SincResampler

    data, source_rate = read(path, start, end)
    return SincResampler(source_rate, rate)(torch.from_numpy(data.mean(axis=1)))
