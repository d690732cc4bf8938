"""Installing a model: converting the official checkpoints into a store entry, written atomically.

What an entry holds is described in :mod:`clapsep_cli.store`; conversion happens once, here.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from clapsep_cli.audio.atomic import normal_modes
from clapsep_cli.errors import ClapsepError
from clapsep_cli.models import checkpoints, store
from clapsep_cli.models.store import FORMAT_VERSION, PARTS, InstalledModel
from clapsep_cli.network.architecture import RELEASED, ModelConfig

TOKENIZER_FILES = ("vocab.json", "merges.txt")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def check_free(name: str, overwrite: bool) -> None:
    """Refuse to replace an installed model unless ``overwrite``."""
    if store.is_installed(name) and not overwrite:
        raise ClapsepError(f"model {name!r} is already installed at {store.models_dir() / name} "
                           "({setting} replaces it)", setting="overwrite")


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
    from clapsep_cli.network.encoders import AudioEncoder, TextEncoder
    from clapsep_cli.network.separation import SeparationNet

    check_free(name, overwrite)
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
    separator = checkpoints.separator_state(sep_raw, clap_audio_branch, config, SeparationNet(config),
                                            str(clapsep_file))
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

    check_free(name, overwrite)
    models = store.models_dir()
    target = models / name
    models.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=models))
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
    return store.get_model(name)
