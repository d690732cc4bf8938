"""Shared fixtures: an isolated model store with tiny random-weight models, no network."""

from __future__ import annotations

import os

# Before anything imports huggingface_hub, which reads this once: every hub lookup is local.
os.environ["HF_HUB_OFFLINE"] = "1"

import socket  # noqa: E402
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from clapsep_cli.models import install, store
from clapsep_cli.network.architecture import RELEASED, TINY, ModelConfig
from tests import official


@pytest.fixture(autouse=True, scope="session")
def no_network() -> Iterator[None]:
    """Fail any test (or fixture) that tries to reach beyond this machine."""
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: object) -> object:
        host = address[0] if isinstance(address, tuple) else address
        if self.family == socket.AF_UNIX or host in ("127.0.0.1", "::1", "localhost"):
            return real_connect(self, address)
        raise AssertionError(f"test tried to reach the network: {address}")

    mp = pytest.MonkeyPatch()
    mp.setattr(socket.socket, "connect", guarded)
    yield
    mp.undo()


@dataclass
class Artefacts:
    """Random-weight checkpoints of one architecture in official layouts, and their weights."""

    clap: Path
    tokenizer: Path
    layouts: dict[int, Path]
    clap_state: dict[str, torch.Tensor]
    training_state: dict[str, torch.Tensor]


def _artefacts(root: Path, cfg: ModelConfig, layouts: tuple[int, ...], clap_seed: int, training_seed: int) -> Artefacts:
    clap = official.random_clap_state(cfg, seed=clap_seed)
    training = official.random_clapsep_training_state(cfg, clap, seed=training_seed)
    written = {n: official.write_clapsep(root / f"clapsep{n}.ckpt", training, clap, n) for n in layouts}
    return Artefacts(official.write_clap(root / "clap.pt", clap), official.write_tokenizer(root / "tok"), written,
                     clap, training)


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> Artefacts:
    return _artefacts(tmp_path_factory.mktemp("checkpoints"), TINY, (1, 2, 3), clap_seed=0, training_seed=1)


@pytest.fixture(scope="session")
def released_files(tmp_path_factory: pytest.TempPathFactory) -> Artefacts:
    """Random-weight checkpoints at the released model's full size (layout 1), built once per run."""
    return _artefacts(tmp_path_factory.mktemp("released"), RELEASED, (1,), clap_seed=5, training_seed=6)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory, tiny_files: Artefacts) -> Path:
    """A store holding the TINY model (layout 1) as the default model."""
    root = tmp_path_factory.mktemp("store")
    mp = pytest.MonkeyPatch()
    mp.setenv("CLAPSEP_HOME", str(root))
    install.install(store.DEFAULT_MODEL, tiny_files.clap, tiny_files.layouts[1], tiny_files.tokenizer, config=TINY)
    mp.undo()
    return root


@pytest.fixture
def home(tiny_store: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Use the shared tiny store (read-only use)."""
    monkeypatch.setenv("CLAPSEP_HOME", str(tiny_store))
    return tiny_store


@pytest.fixture
def empty_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "store"
    monkeypatch.setenv("CLAPSEP_HOME", str(root))
    return root


def tone(seconds: float, rate: int, channels: int = 1, freq: float = 440.0, seed: int = 0) -> np.ndarray:
    """A tone plus a little noise, (frames, channels) float32, different per channel."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * rate))) / rate
    cols = [0.3 * np.sin(2 * np.pi * freq * (1 + 0.1 * c) * t) + 0.05 * rng.standard_normal(len(t))
            for c in range(channels)]
    return np.stack(cols, axis=1).astype(np.float32)


def write_audio(path: Path, data: np.ndarray, rate: int, subtype: str = "FLOAT", **kw: object) -> Path:
    sf.write(str(path), data, rate, subtype=subtype, **kw)
    return path
