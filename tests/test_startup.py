"""Start-up: a run imports only what it needs, and what it skips changes nothing it computes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from clapsep_cli.cli import main
from clapsep_cli.models import store
from clapsep_cli.network.architecture import TINY
from clapsep_cli.network.separation import SeparationNet
from tests.helpers import tone, write_audio

ROOT = Path(__file__).resolve().parent.parent
# Imported by laion-clap and librosa (torchvision, h5py, scipy.signal, numba), which clapsep no longer
# uses, and by the text encoder (transformers): none is needed by an extract whose query is cached.
HEAVY = ("torchvision", "h5py", "scipy.signal", "numba", "librosa.filters", "transformers")

PROBE = """
import json, sys
from clapsep_cli.cli import main
try:
    main(sys.argv[1:], standalone_mode=False)
finally:
    print(json.dumps(sorted(m for m in sys.modules if m.startswith({heavy!r}))), file=sys.stderr)
"""


def test_cached_extract_imports_none_of_the_heavy_modules(home: Path, tmp_path: Path) -> None:
    src = write_audio(tmp_path / "in.wav", tone(3.0, 44100, channels=2), 44100)
    args = ["extract", "dog barking", str(src), "--device", "cpu", "--overwrite", "-o", str(tmp_path / "stem.wav")]
    first = CliRunner().invoke(main, args)  # caches the query embedding
    assert first.exit_code == 0, first.output
    env = {**os.environ, "CLAPSEP_HOME": str(home), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == []
    assert (tmp_path / "stem.wav").is_file()


def test_a_loaded_model_has_the_store_s_front_end_tables(home: Path) -> None:
    """Building to load skips computing the DFT and mel tables; loading fills them from the store."""
    installed = store.get_model()
    sep = installed.load("separator", SeparationNet, torch.device("cpu"))
    saved = load_file(installed.path / "separator.safetensors")
    for key in ("audio_branch.logmel_extractor.melW", "audio_branch.spectrogram_extractor.stft.conv_real.weight"):
        assert torch.equal(sep.state_dict()[key], saved[key])
        assert saved[key].abs().max() > 0
    built = SeparationNet(TINY)  # a build that loads nothing computes the tables
    assert torch.equal(built.audio_branch.logmel_extractor.melW, saved["audio_branch.logmel_extractor.melW"])
