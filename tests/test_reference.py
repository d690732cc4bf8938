"""clapsep against numbers laion-clap and the official forward path computed (stored by
tests/fixtures/make_reference.py), on every Python: from the shell, the three checkpoint layouts
import and the audio-query stem is the official one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors import safe_open

from clapsep_cli.network.architecture import TINY
from testbed import official
from tests.fixtures.make_reference import inputs

REFERENCE = Path(__file__).resolve().parent / "fixtures" / "reference.safetensors"


@pytest.fixture(scope="module")
def reference() -> tuple[dict[str, torch.Tensor], int]:
    with safe_open(str(REFERENCE), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, int(f.metadata()["stride"])  # noqa: SIM118


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reference")
    clap = official.pattern_clap_state(TINY)
    training = official.pattern_clapsep_training_state(TINY, clap)
    files = {"clap": official.write_clap(root / "clap.pt", clap), "tokenizer": official.write_tokenizer(root / "tok")}
    for layout in (1, 2, 3):
        files[f"layout{layout}"] = official.write_clapsep(root / f"clapsep{layout}.ckpt", training, clap, layout)
    return files


def _clapsep(*args: object, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CLAPSEP_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "clapsep_cli", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("layout", [1, 2, 3])
def test_the_stem_from_the_shell_is_the_official_paths(layout: int, checkpoints: dict[str, Path],
                                                      reference: tuple[dict[str, torch.Tensor], int],
                                                      tmp_path: Path) -> None:
    expected, stride = reference
    home = tmp_path / "store"
    done = _clapsep("models", "import", "--clap", checkpoints["clap"], "--clapsep", checkpoints[f"layout{layout}"],
                    "--tokenizer", checkpoints["tokenizer"], "--architecture", "tiny", home=home)
    assert done.returncode == 0, done.stderr
    x = inputs()
    clip = tmp_path / "query.wav"
    sf.write(clip, x["query_clip"].numpy(), 48000, subtype="FLOAT")
    mixture = tmp_path / "mixture.wav"
    sf.write(mixture, x["mixture"].numpy(), 32000, subtype="FLOAT")
    done = _clapsep("extract", "--query-audio", clip, mixture, "--device", "cpu", "--precision", "fp32",
                    "-o", tmp_path / "stem.wav", home=home)
    assert done.returncode == 0, done.stderr
    stem, rate = sf.read(tmp_path / "stem.wav", dtype="float32")
    assert rate == 32000 and stem.shape == (320000,)
    official_stem = expected["estimate"].numpy()
    assert np.abs(official_stem).max() > 0.05  # the comparison is not between two silences
    assert np.max(np.abs(stem[::stride] - official_stem)) < 2e-6 * max(1.0, float(np.abs(official_stem).max()))


def test_the_audio_query_embedding_is_laion_clap_s(reference: tuple[dict[str, torch.Tensor], int]) -> None:
    from clapsep_cli.network.encoders import AudioEncoder, fit_query_clip

    encoder = AudioEncoder(TINY)
    state = official.pattern_clap_state(TINY)
    encoder.load_state_dict({k: v for k, v in state.items() if k.startswith(("audio_branch.", "audio_projection."))})
    with torch.no_grad():
        embedding = encoder.eval()(fit_query_clip(inputs()["query_clip"]))[0]
    torch.testing.assert_close(embedding, reference[0]["query_embedding"], atol=1e-6, rtol=0)
