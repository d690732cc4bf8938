"""The model store: installed models, their fast-loading weights, download and import.

Layout under the store root (``$CLAPSEP_HOME``, else platformdirs' user data dir)::

    models/<name>/manifest.json         what was installed, from which files (sha256), when
    models/<name>/separator.safetensors encoder copy (LoRA merged) + decoder
    models/<name>/text.safetensors      CLAP text branch + projection
    models/<name>/audio.safetensors     CLAP audio branch + projection
    models/<name>/tokenizer/            roberta-base vocab.json + merges.txt
    downloads/                          huggingface_hub cache while downloading

Conversion happens once, at install; a run memory-maps only the parts it needs.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import Any

import platformdirs
import torch
from torch import nn

from clapsep_cli import checkpoints
from clapsep_cli.config import RELEASED, ModelConfig
from clapsep_cli.atomic import normal_modes
from clapsep_cli.errors import ClapsepError, ModelMissingError

DEFAULT_MODEL = "default"
FORMAT_VERSION = 1
PARTS = ("separator", "text", "audio")

CLAP_REPO, CLAP_FILE = "lukewys/laion_clap", "music_audioset_epoch_15_esc_90.14.pt"
CLAPSEP_REPO, CLAPSEP_FILE = "AisakaMikoto/CLAPSep", "model/best_model.ckpt"
TOKENIZER_REPO = "FacebookAI/roberta-base"
TOKENIZER_FILES = ("vocab.json", "merges.txt")

FIX_HINT = "run `clapsep models download` (needs network) or `clapsep models import --clap FILE --clapsep FILE`"


def store_root() -> Path:
    """Root of the model store: ``$CLAPSEP_HOME`` if set, else the per-user data directory."""
    home = os.environ.get("CLAPSEP_HOME")
    return Path(home).expanduser() if home else Path(platformdirs.user_data_dir("clapsep", appauthor=False))


def models_dir() -> Path:
    return store_root() / "models"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def valid_name(name: str) -> str:
    if not name or name.startswith(".") or any(c in name for c in "/\\:") or name != name.strip():
        raise ClapsepError(f"invalid model name {name!r}: use letters, digits, '-', '_' or '.'")
    return name


@dataclass(frozen=True)
class InstalledModel:
    """A model in the store."""

    name: str
    path: Path
    manifest: dict[str, Any]

    @property
    def config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.manifest["architecture"])

    @property
    def fingerprint(self) -> str:
        """Identity of the weights (sha256 over the converted files); changes with the model."""
        return self.manifest["fingerprint"]

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / "tokenizer"

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())

    def load(self, part: str, build: Callable[[ModelConfig], nn.Module], device: torch.device) -> nn.Module:
        """Build one part and load its weights (strict), in eval mode on ``device``.

        The module is built without random initialisation and takes the loaded tensors as its
        own: every persistent tensor is then overwritten by the checkpoint (strict loading makes
        sure of it), which saves seconds per start and a second copy of the weights in memory.
        """
        from safetensors.torch import load_file

        file = self.path / f"{part}.safetensors"
        if not file.is_file():
            raise ModelMissingError(f"model {self.name!r} is incomplete ({file.name} missing); {FIX_HINT}")
        with _skip_random_init():
            module = build(self.config)
        module.load_state_dict(load_file(file, device="cpu"), strict=True, assign=True)
        return module.to(device).eval().requires_grad_(False)


_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
                   "xavier_normal_", "constant_", "zeros_", "ones_", "orthogonal_")


@contextlib.contextmanager
def _skip_random_init() -> Iterator[None]:
    """Make torch.nn.init's fillers (and laion-clap's trunc_normal_) no-ops while building, and
    skip librosa's front-end tables (see :func:`clapsep_cli.laion.placeholder_front_end_tables`)."""
    from clapsep_cli import laion

    htsat = laion.htsat()
    saved = {name: getattr(torch.nn.init, name) for name in _INIT_FUNCTIONS}
    saved_trunc = htsat.trunc_normal_
    for name in _INIT_FUNCTIONS:
        setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
    htsat.trunc_normal_ = lambda tensor, *args, **kwargs: tensor
    try:
        with laion.placeholder_front_end_tables():
            yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)
        htsat.trunc_normal_ = saved_trunc


def read_manifest(path: Path) -> dict[str, Any]:
    manifest_path = path / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ModelMissingError(f"model at {path} has no readable manifest ({err}); reinstall it") from None
    if manifest.get("format") != FORMAT_VERSION:
        raise ModelMissingError(f"model at {path} was written by another clapsep version; reinstall it")
    return manifest


def installed_models() -> list[InstalledModel]:
    root = models_dir()
    if not root.is_dir():
        return []
    out = []
    for entry in sorted(root.iterdir()):
        if entry.is_dir() and not entry.name.startswith(".") and (entry / "manifest.json").is_file():
            try:
                out.append(InstalledModel(entry.name, entry, read_manifest(entry)))
            except ModelMissingError:
                continue
    return out


def get_model(name: str = DEFAULT_MODEL) -> InstalledModel:
    path = models_dir() / valid_name(name)
    if not (path / "manifest.json").is_file():
        raise ModelMissingError(f"model {name!r} is not installed; {FIX_HINT}")
    return InstalledModel(name, path, read_manifest(path))


def _write_tokenizer(src: Path | None, dest: Path) -> int | None:
    """Copy vocab.json and merges.txt; returns the vocabulary size (None if not given)."""
    if src is None:
        return None
    missing = [f for f in TOKENIZER_FILES if not (src / f).is_file()]
    if missing:
        raise ClapsepError(f"tokenizer directory {src} lacks {', '.join(missing)}")
    try:
        vocab = json.loads((src / "vocab.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ClapsepError(f"{src / 'vocab.json'}: not a readable vocabulary ({err})") from None
    if not isinstance(vocab, dict) or len(vocab) < 256:
        raise ClapsepError(f"{src / 'vocab.json'}: not a byte-level BPE vocabulary")
    dest.mkdir(parents=True)
    for f in TOKENIZER_FILES:
        shutil.copyfile(src / f, dest / f)
    return len(vocab)


def install(name: str, clap_file: Path, clapsep_file: Path, tokenizer_dir: Path | None = None,
            config: ModelConfig = RELEASED, overwrite: bool = False, trust_pickle: bool = False,
            origin: str = "import", log: Callable[[str], None] = lambda _: None) -> InstalledModel:
    """Convert official checkpoints into a store entry named ``name``."""
    from clapsep_cli.query_encoder import AudioEncoder, TextEncoder
    from clapsep_cli.separator import Separator

    target = models_dir() / valid_name(name)
    if target.exists() and not overwrite:
        raise ClapsepError(f"model {name!r} is already installed at {target}; pass --overwrite to replace it")
    log(f"reading {clap_file}")
    clap = checkpoints.clap_state(checkpoints.read(clap_file, trust_pickle), str(clap_file))
    text_state, audio_state = checkpoints.split_clap(clap)
    log(f"reading {clapsep_file}")
    sep_raw = checkpoints.read(clapsep_file, trust_pickle)
    log("checking and converting weights")
    parts = {
        "text": checkpoints.fit_to_module(text_state, TextEncoder(config), f"CLAP checkpoint {clap_file}"),
        "audio": checkpoints.fit_to_module(audio_state, AudioEncoder(config), f"CLAP checkpoint {clap_file}"),
    }
    clap_audio_branch = {k[len("audio_branch."):]: v for k, v in audio_state.items() if k.startswith("audio_branch.")}
    separator = checkpoints.separator_state(sep_raw, clap_audio_branch, config, Separator(config), str(clapsep_file))
    found = checkpoints.apply_query_tensors(parts, separator.query, str(clapsep_file))
    if found["differ_from_clap"]:
        log(f"{found['differ_from_clap']} of the {found['tensors']} query-encoder tensors in {clapsep_file.name} "
            "differ from the CLAP checkpoint's; using the CLAPSep checkpoint's, as the released Space does")
    parts["separator"], separator_layout = separator.state, separator.layout
    del clap, sep_raw, separator
    sources = {role: {"file": f.name, "bytes": f.stat().st_size, "sha256": sha256_file(f)}
               for role, f in (("clap", clap_file), ("clapsep", clapsep_file))}
    model = write_model(name, parts, config, tokenizer_dir, overwrite,
                        {"origin": origin, "clapsep_layout": separator_layout, "query_tensors_from_clapsep": found,
                         "sources": sources})
    log(f"installed model {name!r} at {model.path}")
    return model


def write_model(name: str, parts: dict[str, dict[str, torch.Tensor]], config: ModelConfig,
                tokenizer_dir: Path | None, overwrite: bool, details: dict[str, Any]) -> InstalledModel:
    """Write complete state dicts of the three parts as store entry ``name``, atomically.

    The entry is assembled in a hidden folder beside its destination and renamed into place.
    """
    from safetensors.torch import save_file

    target = models_dir() / valid_name(name)
    if target.exists() and not overwrite:
        raise ClapsepError(f"model {name!r} is already installed at {target}; pass --overwrite to replace it")
    models_dir().mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=models_dir()))
    try:
        vocab_size = _write_tokenizer(tokenizer_dir, staging / "tokenizer")
        digest = hashlib.sha256()
        for part in PARTS:
            file = staging / f"{part}.safetensors"
            save_file({k: v.contiguous() for k, v in parts[part].items()}, str(file), metadata={"clapsep_part": part})
            digest.update(sha256_file(file).encode())
        manifest = {
            "format": FORMAT_VERSION,
            "name": name,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "architecture": config.to_dict(),
            "fingerprint": digest.hexdigest(),
            "tokenizer": {"vocab_size": vocab_size} if vocab_size else None,
            **details,
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        normal_modes(staging)  # mkdtemp and safetensors make owner-only entries
        if target.exists():
            trash = target.with_name(f".{name}.old")
            shutil.rmtree(trash, ignore_errors=True)
            target.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return get_model(name)


def remove(name: str) -> Path:
    model = get_model(name)
    shutil.rmtree(model.path)
    return model.path


@dataclass(frozen=True)
class HubFile:
    """A file of a Hugging Face Hub repository."""

    repo: str
    path: str
    repo_type: str = "model"

    def __str__(self) -> str:
        return f"{self.repo}/{self.path}"


RELEASE_FILES = {
    "clap": HubFile(CLAP_REPO, CLAP_FILE),
    "clapsep": HubFile(CLAPSEP_REPO, CLAPSEP_FILE, "space"),
    **{name: HubFile(TOKENIZER_REPO, name) for name in TOKENIZER_FILES},
}
HUB_TIMEOUT = 10.0  # seconds to wait for the Hub (or HF_ENDPOINT) to answer before giving up
# The Hub tags a file stored with git LFS (the checkpoints) with its sha256, a plain git file (the
# tokenizer's) with its git blob id: sha1 over "blob <size>\0" and the bytes.
CHECKSUM_LENGTHS = (64, 40)
OFFLINE_FIX = ("to install without network, copy the files onto this machine and run "
               "`clapsep models import --clap FILE --clapsep FILE --tokenizer DIR`")


def _hub_checksum(path: Path, etag: str) -> str:
    """``path``'s checksum in the form of the Hub's ETag ``etag`` (see :data:`CHECKSUM_LENGTHS`)."""
    if len(etag) == 64:
        return sha256_file(path)
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _reason(err: Exception) -> str:
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(err, OfflineModeIsEnabled):
        return "downloads are switched off (HF_HUB_OFFLINE is set)"
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        status = err.response.status_code
        return f"HTTP {status}{' (not found)' if status == 404 else ''}"
    return checkpoints.first_line(err)


def fetch(file: HubFile, folder: Path, log: Callable[[str], None] = lambda _: None) -> Path:
    """Download ``file`` into ``folder`` and check it against the checksum the Hub gives for it.

    The bytes go to ``<checksum>.part`` first, so an interrupted transfer resumes where it stopped
    on the next call; a file whose bytes do not match is deleted and an error raised.
    """
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get

    try:
        meta = get_hf_file_metadata(hf_hub_url(file.repo, file.path, repo_type=file.repo_type), timeout=HUB_TIMEOUT)
    except Exception as err:  # noqa: BLE001 - connection, HTTP and offline errors of several libraries
        raise ModelMissingError(
            f"cannot download {file} from {constants.ENDPOINT}: {_reason(err)}; {OFFLINE_FIX}") from None
    if len(meta.etag or "") not in CHECKSUM_LENGTHS:
        raise ModelMissingError(f"cannot download {file} from {constants.ENDPOINT}: no checksum to check it against "
                                f"(ETag {meta.etag!r}); {OFFLINE_FIX}")
    folder.mkdir(parents=True, exist_ok=True)
    done = folder / meta.etag
    if done.is_file():
        return done
    part = done.with_suffix(".part")
    have = part.stat().st_size if part.is_file() else 0
    if meta.size is not None and have > meta.size:
        part.unlink()
        have = 0
    log(f"downloading {file}" + (f" (resuming at {have / 2**20:.1f} MiB)" if have else ""))
    try:
        with open(part, "ab") as out:
            http_get(meta.location, out, resume_size=have, expected_size=meta.size, displayed_filename=file.path,
                     headers={"Accept-Encoding": "identity"})
    except Exception as err:  # noqa: BLE001 - as above
        raise ClapsepError(f"download of {file} stopped: {_reason(err)}; re-run to resume") from None
    if _hub_checksum(part, meta.etag) != meta.etag:
        part.unlink()
        raise ClapsepError(f"{file}: downloaded bytes do not match the checksum the server gives ({meta.etag}); "
                           "nothing installed, re-run to download it again")
    part.rename(done)
    return done


def download(name: str = DEFAULT_MODEL, config: ModelConfig = RELEASED, overwrite: bool = False,
             keep_downloads: bool = False, log: Callable[[str], None] = lambda _: None) -> InstalledModel:
    """Fetch the released CLAP and CLAPSep checkpoints and the tokenizer, check them, then install them."""
    target = models_dir() / valid_name(name)
    if target.exists() and not overwrite:
        raise ClapsepError(f"model {name!r} is already installed at {target}; pass --overwrite to replace it")
    cache = store_root() / "downloads"
    files = {role: fetch(file, cache / file.repo.replace("/", "--"), log) for role, file in RELEASE_FILES.items()}
    with tempfile.TemporaryDirectory() as tmp:
        for name_ in TOKENIZER_FILES:
            shutil.copyfile(files[name_], Path(tmp) / name_)
        model = install(name, files["clap"], files["clapsep"], Path(tmp), config=config, overwrite=overwrite,
                        origin="download", log=log)
    if not keep_downloads:
        shutil.rmtree(cache, ignore_errors=True)
    return model


def ensure_model(name: str = DEFAULT_MODEL, log: Callable[[str], None] = lambda _: None) -> InstalledModel:
    """The installed model ``name``; the default model is downloaded on first use when online."""
    try:
        return get_model(name)
    except ModelMissingError:
        from huggingface_hub import constants

        if name != DEFAULT_MODEL or constants.is_offline_mode():
            raise
    log("no model installed yet: downloading the released CLAPSep model (one time, about 2 GB)")
    return download(name, log=log)
