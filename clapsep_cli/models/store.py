"""The model store: where installed models live, what their manifests say, and loading their parts.

Layout under the store root (``$CLAPSEP_HOME``, else platformdirs' user data dir)::

    models/<name>/manifest.json         what was installed, from which files (sha256), when
    models/<name>/separator.safetensors encoder copy (LoRA merged) + decoder
    models/<name>/text.safetensors      CLAP text branch + projection
    models/<name>/audio.safetensors     CLAP audio branch + projection
    models/<name>/tokenizer/            roberta-base vocab.json + merges.txt
    downloads/                          the released checkpoints while downloading
    embeddings/                         cached query embeddings
    training/<name>/                    training checkpoints of model <name>

Entries are written by :mod:`clapsep_cli.install` (converting checkpoints) and
:mod:`clapsep_cli.download`; a run memory-maps only the parts it needs.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import platformdirs

from clapsep_cli.errors import ClapsepError, ModelMissingError
from clapsep_cli.network.architecture import ModelConfig

if TYPE_CHECKING:
    import torch
    from torch import nn

DEFAULT_MODEL = "default"
FORMAT_VERSION = 1
PARTS = ("separator", "text", "audio")

FIX_HINT = "run `clapsep models download` (needs network) or `clapsep models import --clap FILE --clapsep FILE`"


def store_root() -> Path:
    """Root of the model store: ``$CLAPSEP_HOME`` if set, else the per-user data directory."""
    home = os.environ.get("CLAPSEP_HOME")
    return Path(home).expanduser() if home else Path(platformdirs.user_data_dir("clapsep", appauthor=False))


def models_dir() -> Path:
    return store_root() / "models"


def downloads_dir() -> Path:
    """Where downloads wait (and resume) until they are installed."""
    return store_root() / "downloads"


def training_dir(name: str) -> Path:
    """Default folder for the training checkpoints of model ``name``."""
    return store_root() / "training" / valid_name(name)


def valid_name(name: str) -> str:
    if not name or name.startswith(".") or any(c in name for c in "/\\:") or name != name.strip():
        raise ClapsepError(f"invalid model name {name!r}: use letters, digits, '-', '_' or '.'")
    return name


def is_installed(name: str) -> bool:
    """Whether the store has an entry named ``name`` (complete or not): installing there needs overwrite."""
    return (models_dir() / valid_name(name)).exists()


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

    def read_part(self, part: str) -> dict[str, torch.Tensor]:
        """The state dict of one part (``separator``, ``text`` or ``audio``), memory-mapped, on the CPU."""
        from safetensors.torch import load_file

        file = self.path / f"{part}.safetensors"
        if not file.is_file():
            raise ModelMissingError(f"model {self.name!r} is incomplete ({file.name} missing); {FIX_HINT}")
        return load_file(file, device="cpu")

    def load(self, part: str, build: Callable[[ModelConfig], nn.Module], device: torch.device) -> nn.Module:
        """Build one part and load its weights (strict), in eval mode on ``device``.

        The module's weights are built on the meta device (no memory, no random initialisation)
        and it takes the loaded tensors as its own: strict loading makes sure every one is
        filled (the front end's DFT and mel tables are not computed either). That saves
        seconds per start and a second copy of the weights in memory.
        """
        from clapsep_cli.network.fast_build import check_materialised, weights_on_meta

        state = self.read_part(part)
        with weights_on_meta():
            module = build(self.config)
        module.load_state_dict(state, strict=True, assign=True)
        check_materialised(module)
        return module.to(device).eval().requires_grad_(False)


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


def remove(name: str) -> Path:
    model = get_model(name)
    shutil.rmtree(model.path)
    return model.path
