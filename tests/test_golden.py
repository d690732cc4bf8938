"""Our decoder and resampler against outputs the official CLAPSep code computed (tests/fixtures/make_golden.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from clapsep_cli.audio.dsp import SincResampler
from clapsep_cli.network.architecture import DecoderConfig, HTSATConfig
from clapsep_cli.network.decoder import Decoder
from testbed import official

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "golden.safetensors"


@pytest.fixture(scope="module")
def golden() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(GOLDEN), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()  # noqa: SIM118 - safe_open is not iterable


def _decoder() -> Decoder:
    cfg = official.GOLDEN_DECODER
    config = DecoderConfig(
        embed_dim=cfg["embed_dim"], encoder_embed_dim=cfg["encoder_embed_dim"], depths=tuple(cfg["depths"]),
        num_heads=tuple(cfg["num_heads"]), window_size=cfg["window_size"], d_attn=cfg["d_attn"],
        n_masker_layer=cfg["n_masker_layer"], spec_factor=cfg["spec_factor"], mlp_ratio=cfg["mlp_ratio"])
    return Decoder(config, HTSATConfig(), official.GOLDEN_COND_DIM)


def test_decoder_has_the_official_parameter_names(golden: tuple[dict[str, torch.Tensor], dict[str, str]]) -> None:
    _, meta = golden
    assert sorted(_decoder().state_dict()) == json.loads(meta["decoder_keys"])


def test_decoder_matches_the_official_output(golden: tuple[dict[str, torch.Tensor], dict[str, str]]) -> None:
    tensors, _ = golden
    decoder = _decoder()
    decoder.load_state_dict(official.golden_state(decoder.state_dict()), strict=True)
    x = official.golden_inputs()
    features = [x["patch"], x["layer0"], x["layer1"], x["layer2"], x["layer3"]]
    with torch.no_grad():
        mask = decoder.eval()(features, x["magnitude"].transpose(1, 2), x["cond"]).transpose(1, 2)
    expected = tensors["mask"]
    assert mask.shape == expected.shape
    assert expected.std() > 0.01  # a mask that varies, so agreement means something
    torch.testing.assert_close(mask, expected, atol=2e-5, rtol=0)


def test_resampler_matches_the_official_pipelines(golden: tuple[dict[str, torch.Tensor], dict[str, str]]) -> None:
    tensors, _ = golden
    got = SincResampler(32000, 48000)(official.golden_inputs()["signal32k"])
    torch.testing.assert_close(got, tensors["resampled"], atol=1e-5, rtol=0)
