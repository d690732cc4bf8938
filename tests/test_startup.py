"""Start-up: a run imports only what it needs, and what it skips changes nothing it computes."""

from __future__ import annotations

import importlib.util
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
from clapsep_cli.network import laion
from clapsep_cli.network.architecture import TINY
from clapsep_cli.network.separation import SeparationNet
from tests.helpers import tone, write_audio

ROOT = Path(__file__).resolve().parent.parent
# Imported by laion-clap's utils.py (torchvision, h5py), by librosa.filters (scipy.signal, numba)
# and by the text encoder (transformers): none is needed by an extract whose query is cached.
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


def _real_laion_utils():  # type: ignore[no-untyped-def]
    path = Path(importlib.util.find_spec("laion_clap").submodule_search_locations[0]) / "clap_module" / "utils.py"
    spec = importlib.util.spec_from_file_location("_real_laion_clap_utils", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the whole file: torchvision, h5py and all
    return module


def test_htsat_gets_laion_clap_s_own_utils_functions() -> None:
    real = _real_laion_utils()
    htsat = laion.htsat()
    for name in ("do_mixup", "interpolate"):
        ours, theirs = getattr(htsat, name), getattr(real, name)
        assert ours.__code__.co_code == theirs.__code__.co_code
        assert ours.__code__.co_consts == theirs.__code__.co_consts
        assert ours.__code__.co_filename == theirs.__code__.co_filename
        assert ours.__code__.co_firstlineno == theirs.__code__.co_firstlineno
    x, lam = torch.randn(4, 3, 5), torch.rand(4)
    assert torch.equal(htsat.do_mixup(x, lam), real.do_mixup(x, lam))
    assert torch.equal(htsat.interpolate(x, 8), real.interpolate(x, 8))


def test_placeholder_tables_are_overwritten_by_the_loaded_weights(home: Path) -> None:
    import torchlibrosa.stft

    installed = store.get_model()
    sep = installed.load("separator", SeparationNet, torch.device("cpu"))
    saved = load_file(installed.path / "separator.safetensors")
    for key in ("audio_branch.logmel_extractor.melW", "audio_branch.spectrogram_extractor.stft.conv_real.weight"):
        assert torch.equal(sep.state_dict()[key], saved[key])
        assert saved[key].abs().max() > 0
    assert torchlibrosa.stft.librosa.__name__ == "librosa"  # restored after the build
    built = SeparationNet(TINY)  # a build that loads nothing keeps librosa's real tables
    assert torch.allclose(built.audio_branch.logmel_extractor.melW, saved["audio_branch.logmel_extractor.melW"])
