"""The library API used directly, as a notebook or batch script would (not through the CLI)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from clapsep_cli import api
from clapsep_cli.engine.options import (
    CUDA_BATCH_SIZE,
    DEFAULT_BATCH_SIZE,
    DEFAULT_PREFETCH,
    default_batch_size,
    default_prefetch,
)
from clapsep_cli.errors import AudioError, ClapsepError, SettingError
from clapsep_cli.jobs.plan import OutputPlan
from clapsep_cli.queries import presets
from tests.helpers import tone, write_audio

PACKAGE = Path(__file__).resolve().parent.parent / "clapsep_cli"


def test_a_preset_and_texts_combine_by_one_rule() -> None:
    dog = presets.load("dog")
    req = api.request("a puppy yelps", preset="dog", negative=["rain"])
    assert req.query.positive == dog.query.positive + ("a puppy yelps",)
    assert req.query.negative == dog.query.negative + ("rain",)
    assert req.query.tag == dog.tag and req.residual == dog.residual
    assert api.request(preset="dog", audio_weight=0.9).query.audio_weight == 0.9
    plain = api.request("dog barking", "")
    assert plain.query.positive == ("dog barking",) and not plain.residual and plain.method is None
    with pytest.raises(ClapsepError, match="empty query"):
        api.request("")


def test_removal_by_negative_query_swaps_the_sides_and_by_subtraction_inverts() -> None:
    req = api.request("wind noise", negative=["speech"])
    negative = api.removal(req)
    assert (negative.query.positive, negative.query.negative) == (("speech",), ("wind noise",))
    assert negative.query.tag == "without_wind_noise" and not negative.invert
    subtract = api.removal(req, "subtract")
    assert (subtract.query.positive, subtract.query.negative) == (("wind noise",), ("speech",))
    assert subtract.invert and subtract.query.tag == "without_wind_noise"
    with pytest.raises(SettingError) as caught:
        api.removal(req, "erase")
    assert caught.value.setting == "method"
    assert caught.value.render(lambda s: f"--{s}").startswith("--method must be one of")


@pytest.mark.parametrize("channels", [1, 2])
def test_separating_an_array_equals_extracting_its_file(home: Path, tmp_path: Path, channels: int) -> None:
    wave = tone(12.5, 44100, channels)
    source = write_audio(tmp_path / "take.wav", wave, 44100)
    sep = api.Separator(device="cpu", precision="fp32")
    req = api.request("dog barking")
    array = wave[:, 0] if channels == 1 else wave
    stem, residual = sep.separate(array, 44100, req)
    assert stem.shape == residual.shape == array.shape
    np.testing.assert_allclose(stem + residual, array, atol=1e-6)
    job = sep.extract([source], req, OutputPlan(bit_depth="32f"))
    assert [r.status for r in job.results] == ["ok"] and job.model_loaded
    written, rate = sf.read(str(job.results[0].target), dtype="float32", always_2d=True)
    assert rate == 44100
    np.testing.assert_array_equal(written, stem.reshape(len(stem), -1))
    removed, kept = sep.separate(array, 44100, api.removal(req, "subtract"))
    np.testing.assert_allclose(removed, residual, atol=1e-6)
    np.testing.assert_allclose(kept, stem, atol=1e-6)


def test_bad_arrays_are_refused_with_one_line(home: Path) -> None:
    sep = api.Separator(device="cpu")
    wave = tone(2.0, 32000)[:, 0]
    wave[40000] = np.inf
    with pytest.raises(AudioError, match=r"non-finite sample at frame 40000 \(1.250 s\)"):
        sep.separate(wave, 32000, api.request("dog"))
    with pytest.raises(SettingError, match="rate"):
        sep.separate(wave[:10], 0, api.request("dog"))
    with pytest.raises(AudioError, match="frames"):
        sep.separate(np.zeros((0, 2), np.float32), 32000, api.request("dog"))


def test_planning_checks_everything_without_a_model(empty_home: Path, tmp_path: Path) -> None:
    source = write_audio(tmp_path / "walk.wav", tone(1.0, 32000), 32000)
    (tmp_path / "walk.dog.wav").write_bytes(b"an earlier stem")
    sep = api.Separator(device="cpu")
    job = sep.plan([source, tmp_path / "missing.wav"], api.request("dog"))
    assert [r.status for r in job.results] == ["skipped", "failed"]
    assert job.results[0].problem is not None and job.results[0].problem.setting == "overwrite"
    assert "missing.wav" in str(job.results[1].error)
    assert not sep.loaded and not sep.run(job).model_loaded  # nothing to separate: the model is never needed
    assert job.to_json()["results"][0]["status"] == "skipped"


def test_batch_size_and_read_ahead_default_to_the_devices_and_an_explicit_batch_size_wins() -> None:
    assert api.Separator(device="cpu").options.batch_size == DEFAULT_BATCH_SIZE
    assert api.Separator(device="cpu").options.prefetch == 0  # the network's threads use every core
    assert default_prefetch(torch.device("cuda", 0)) == DEFAULT_PREFETCH > 0
    assert api.Separator(device="cpu", batch_size=5).options.batch_size == 5
    assert default_batch_size(torch.device("cuda", 0)) == CUDA_BATCH_SIZE > DEFAULT_BATCH_SIZE
    assert default_batch_size(torch.device("mps")) == DEFAULT_BATCH_SIZE
