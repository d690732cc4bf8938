"""Audio files in and out: probing, block-wise reading, atomic block-wise writing.

Reading goes through libsndfile (WAV, FLAC, OGG/Vorbis/Opus, MP3, AIFF, ...) and falls back to
ffmpeg, located and probed with pydub's helpers, for what libsndfile cannot open (m4a, aac,
...); ffmpeg's decoded PCM is streamed, never held whole. Writing is block-wise into a hidden
temporary file beside the destination, renamed into place only when complete, so a stem is
either whole or absent and a source is never touched.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from clapsep_cli.atomic import TempFile
from clapsep_cli.errors import AudioError, ClapsepError, SettingError

BLOCK = 1 << 16
STEM_MARK = "clapsep stem"  # the start of the comment tag of every stem clapsep writes

# Output containers we write: name -> (libsndfile format, extension, allowed bit depths)
FORMATS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "wav": ("WAV", "wav", ("16", "24", "32f")),
    "flac": ("FLAC", "flac", ("16", "24")),
    "ogg": ("OGG", "ogg", ()),
    "mp3": ("MP3", "mp3", ()),
    "aiff": ("AIFF", "aiff", ("16", "24", "32f")),
}
SUBTYPES = {"16": "PCM_16", "24": "PCM_24", "32f": "FLOAT"}
LOSSY_SUBTYPES = {"ogg": "VORBIS", "mp3": "MPEG_LAYER_III"}
CLIP_POLICIES = ("rescale", "clamp", "none")


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


def _finite(path: Path, rate: int, start: int, blocks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """Pass blocks through, refusing the first NaN or infinite sample with one line saying where."""
    position = start
    for data in blocks:
        bad = ~np.isfinite(data)
        if bad.any():
            frame, channel = np.argwhere(bad)[0]
            at = position + int(frame)
            raise AudioError(f"{path}: sample {at} ({at / rate:.3f} s), channel {int(channel) + 1}, is "
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
    from clapsep_cli.dsp import SincResampler

    data, source_rate = read(path, start, end)
    return SincResampler(source_rate, rate)(torch.from_numpy(data.mean(axis=1)))


@dataclass(frozen=True)
class OutputFormat:
    """Container, libsndfile subtype and file extension of a stem."""

    name: str
    container: str
    subtype: str
    extension: str

    @property
    def is_float(self) -> bool:
        return self.subtype in ("FLOAT", "DOUBLE")


def _depth_of(subtype: str | None) -> str | None:
    return {"PCM_16": "16", "PCM_24": "24", "FLOAT": "32f", "PCM_S8": "16", "PCM_U8": "16",
            "PCM_32": "32f", "DOUBLE": "32f"}.get(subtype or "")


def choose_format(source: AudioInfo, fmt: str | None = None, bit_depth: str | None = None) -> OutputFormat:
    """The stem's format: as asked, else the source's container and bit depth where writable."""
    if fmt is None:
        container = (source.container or "").upper()
        fmt = next((name for name, spec in FORMATS.items() if spec[0] == container), "wav")
        if fmt in ("ogg", "mp3") and bit_depth is not None:
            fmt = "wav"
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise ClapsepError(f"unknown output format {fmt!r}: choose {', '.join(FORMATS)}")
    container, extension, depths = FORMATS[fmt]
    if not depths:
        if bit_depth is not None:
            raise SettingError("bit_depth", f"does not apply to {fmt} (a lossy format)")
        return OutputFormat(fmt, container, LOSSY_SUBTYPES[fmt], extension)
    depth = bit_depth or _depth_of(source.subtype) or "24"
    if depth not in depths:
        if bit_depth is not None:
            raise SettingError("bit_depth", f"{bit_depth} is not possible in {fmt} (choose {', '.join(depths)})")
        depth = depths[-1]
    return OutputFormat(fmt, container, SUBTYPES[depth], extension)


def choose_format_for_name(path: Path, fmt: str | None, bit_depth: str | None) -> OutputFormat | None:
    """The format :func:`choose_format` would pick for a source known only by its name."""
    suffix = path.suffix.lower().lstrip(".")
    container = {"aif": "AIFF", "aiff": "AIFF", "oga": "OGG", "opus": "OGG"}.get(suffix, suffix.upper())
    try:
        return choose_format(AudioInfo(path, 1, 1, 1, container, None), fmt, bit_depth)
    except ClapsepError:
        return None


def resolve_clip(policy: str | None, fmt: OutputFormat) -> str:
    """Clip policy for ``fmt``: the default is ``none`` for float stems and ``clamp`` otherwise."""
    if policy is None:
        return "none" if fmt.is_float else "clamp"
    if policy not in CLIP_POLICIES:
        raise ClapsepError(f"unknown clip policy {policy!r}: choose {', '.join(CLIP_POLICIES)}")
    if policy == "none" and not fmt.is_float:
        raise SettingError("clip", f"none needs a float format ({fmt.name} {fmt.subtype} cannot exceed full scale; "
                           "a 32-bit float bit depth can)")
    return policy


def _write_error(path: Path, err: Exception, file: sf.SoundFile | None = None) -> AudioError:
    """One line for a failed write. soundfile's exception says only "System error"; the open
    file's own libsndfile message holds the reason ("No space left on device")."""
    reason = getattr(err, "strerror", None) or str(err).strip() or "System error"
    if file is not None and not file.closed:
        try:
            detail = sf._ffi.string(sf._snd.sf_strerror(file._file)).decode(errors="replace")
            reason = detail.split(" : ", 1)[-1].rstrip(".") or reason
        except (AttributeError, TypeError):  # soundfile internals moved: keep its own text
            pass
    return AudioError(f"{path}: cannot write ({reason})")


class StemWriter:
    """Writes one stem block by block to a temporary file and renames it into place on commit.

    ``clamp`` limits samples to [-1, 1] (and counts them); ``rescale`` writes float first and,
    if the peak exceeds 1, rescales the whole stem to peak 1 in a second streaming pass. Every
    stem carries a comment tag starting with :data:`STEM_MARK` (``label`` follows it), so folder
    scans can tell stems from sources. Any write failure raises :class:`AudioError` (one line)
    and leaves no temporary file.
    """

    def __init__(self, path: Path, rate: int, channels: int, fmt: OutputFormat, clip: str, overwrite: bool,
                 label: str = ""):
        self.path, self.rate, self.channels, self.fmt, self.clip = path, rate, channels, fmt, clip
        self.overwrite = overwrite
        self.comment = f"{STEM_MARK}: {label}" if label else STEM_MARK
        self.peak = 0.0
        self.clipped = 0
        self.frames = 0
        self.gain = 1.0
        if path.exists() and not overwrite:
            raise ClapsepError(f"{path}: exists ({{setting}} replaces it)", setting="overwrite")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = TempFile(path)
        except OSError as err:
            raise _write_error(path, err) from None
        first_pass = OutputFormat("wav", "WAV", "FLOAT", "wav") if clip == "rescale" and not fmt.is_float else fmt
        self._first_pass = first_pass
        self._file = self._open(self._tmp, first_pass)

    def _open(self, tmp: TempFile, fmt: OutputFormat) -> sf.SoundFile:
        try:
            f = sf.SoundFile(str(tmp.path), "w", self.rate, self.channels, subtype=fmt.subtype, format=fmt.container)
        except (sf.LibsndfileError, RuntimeError) as err:
            tmp.discard()
            raise AudioError(f"{self.path}: cannot write {fmt.name} at {self.rate} Hz ({err})") from None
        f.software, f.comment = "clapsep", self.comment
        return f

    def write(self, block: np.ndarray) -> None:
        if len(block) == 0:
            return
        block_peak = peak(block)
        self.peak = max(self.peak, block_peak)
        if self.clip == "clamp" and block_peak > 1.0:
            self.clipped += int(np.count_nonzero(np.abs(block) > 1.0))
            block = np.clip(block, -1.0, 1.0)
        try:
            self._file.write(block)
        except (sf.LibsndfileError, RuntimeError, OSError) as err:
            raise _write_error(self.path, err, self._file) from None
        self.frames += len(block)

    def commit(self) -> Path:
        try:
            self._file.close()
            if self.clip == "rescale" and (self.peak > 1.0 or self._first_pass != self.fmt):
                self._rescale()
            self._tmp.publish(self.overwrite)
        except FileExistsError:
            raise ClapsepError(f"{self.path}: appeared while writing ({{setting}} replaces it)",
                               setting="overwrite") from None
        except (sf.LibsndfileError, RuntimeError, OSError) as err:
            self.abort()
            raise _write_error(self.path, err) from None
        return self.path

    def _rescale(self) -> None:
        self.gain = 1.0 / self.peak if self.peak > 1.0 else 1.0
        final = TempFile(self.path)
        try:
            with sf.SoundFile(str(self._tmp.path)) as src, self._open(final, self.fmt) as out:
                for block in src.blocks(blocksize=BLOCK, dtype="float32", always_2d=True):
                    out.write(np.clip(block * self.gain, -1.0, 1.0))
        except BaseException:
            final.discard()
            raise
        self._tmp.discard()
        self._tmp = final

    def abort(self) -> None:
        """Drop the stem: close and remove the temporary file, whatever state it is in."""
        if not self._file.closed:
            try:
                self._file.close()
            except (sf.LibsndfileError, RuntimeError, OSError):
                pass  # closing flushes; on a full disk that fails too, and the file goes anyway
        self._tmp.discard()
