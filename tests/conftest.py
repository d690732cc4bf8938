"""Shared fixtures: an isolated model store with tiny random-weight models, no network, a full disk."""

from __future__ import annotations

import os

# Before anything imports huggingface_hub, which reads this once: every hub lookup is local.
os.environ["HF_HUB_OFFLINE"] = "1"
# Jobs run in the test's own process unless a test asks for the warm service (tests/test_service.py),
# whose socket lives in a runtime folder of this run's own (a short path: sockets' paths are limited).
os.environ["CLAPSEP_SERVER"] = "never"
os.environ["XDG_RUNTIME_DIR"] = __import__("tempfile").mkdtemp(prefix="csrt-", dir="/tmp")

import importlib.util  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
from collections.abc import Iterator
from pathlib import Path

import pytest

from clapsep_cli.models import install, store
from clapsep_cli.network.architecture import RELEASED, TINY, ModelConfig
from testbed import official
from tests.helpers import Artefacts

# A run started in the background of a non-interactive shell (`sh -c '... &'`) inherits Ctrl-C
# ignored, and Python then keeps it so; the Ctrl-C tests, and the processes they start, need it back.
signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``laion`` need laion-clap and torchlibrosa, the independent references."""
    if importlib.util.find_spec("laion_clap") is None:
        skip = pytest.mark.skip(reason="laion-clap, the independent reference, installs only on Python below 3.13 "
                                       "(it pins numpy<2); tests/test_reference.py holds its numbers on every Python")
        for item in items:
            if "laion" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def runtime_folder() -> Iterator[Path]:
    """This run's runtime folder; a service a test left running there is stopped at the end."""
    yield Path(os.environ["XDG_RUNTIME_DIR"])
    from clapsep_cli.service import client

    client.stop()
    shutil.rmtree(os.environ["XDG_RUNTIME_DIR"], ignore_errors=True)


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


@pytest.fixture
def full_disk(tmp_path: Path) -> Path:
    """A 256 KiB tmpfs (needs root, as CI has)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)
