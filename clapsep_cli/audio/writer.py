"""Writing stems: output formats, clip policies, block-wise atomic writing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from clapsep_cli.audio.atomic import TempFile
from clapsep_cli.audio.reader import BLOCK, STEM_MARK, AudioInfo, peak
from clapsep_cli.errors import AudioError, ClapsepError, SettingError

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
