"""Building blocks of the network against independent definitions, and parameter names
against the released checkpoint's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clapsep_cli.network.architecture import RELEASED, TINY
from clapsep_cli.network.decoder import PatchExpand
from clapsep_cli.network.htsat import HTSAT
from clapsep_cli.network.lora import merge_lora
from clapsep_cli.network.separation import SeparationNet
from clapsep_cli.network.swin import PatchMerging
from testbed.official import LoRALinear

TSV = Path(__file__).parent / "data" / "official-state-dict.tsv"


def test_lora_merge_equals_unmerged_layer() -> None:
    torch.manual_seed(0)
    base = torch.nn.Linear(48, 144)
    a, b = torch.randn(16, 48), torch.randn(144, 16)
    unmerged = LoRALinear(base, a, b, scaling=1 / 16)
    merged_state = merge_lora({"l.weight": base.weight.data, "l.bias": base.bias.data, "l.lora_A": a, "l.lora_B": b},
                              1 / 16)
    assert set(merged_state) == {"l.weight", "l.bias"}
    merged = torch.nn.Linear(48, 144)
    merged.load_state_dict({"weight": merged_state["l.weight"], "bias": merged_state["l.bias"]})
    x = torch.randn(5, 48)
    assert torch.allclose(merged(x), unmerged(x), atol=1e-5)


def test_lora_merge_names_an_incomplete_pair() -> None:
    with pytest.raises(KeyError, match="l.lora_B"):
        merge_lora({"l.weight": torch.zeros(2, 2), "l.lora_A": torch.zeros(1, 2)}, 1.0)
    with pytest.raises(KeyError, match="m.lora_A"):
        merge_lora({"m.weight": torch.zeros(2, 2), "m.lora_B": torch.zeros(2, 1)}, 1.0)


def test_patch_expand_undoes_patch_merging_layout() -> None:
    """Expanding what Swin's patch merging gathered (space-to-depth) restores the tokens."""
    merging = PatchMerging((8, 8), dim=4)
    merging.norm, merging.reduction = torch.nn.Identity(), torch.nn.Identity()
    x = torch.randn(2, 64, 4)
    gathered = merging(x)  # (2, 16 tokens, 16 channels): block k holds one of the 2x2 positions
    expand = PatchExpand((4, 4), dim=8)
    expand.expand, expand.norm = torch.nn.Identity(), torch.nn.Identity()
    assert torch.equal(expand(gathered), x)


def test_decoder_frame_unfolding_inverts_htsat_folding() -> None:
    enc = HTSAT(TINY.htsat)
    dec = SeparationNet(TINY).decoder_model
    frames = torch.randn(2, 1, 1024, 64)
    image = enc.reshape_wav2img(frames)
    assert torch.equal(dec._image_to_frames(image), frames[:, 0])


def _official_keys() -> dict[str, tuple[list[int], str]]:
    rows = {}
    for line in TSV.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, dtype = line.split("\t")
        rows[key] = (eval(shape), dtype)  # noqa: S307 - our own test data: "[513, 1, 1024]"
    return rows


@pytest.mark.slow
def test_separator_parameter_names_and_shapes_match_the_release() -> None:
    official = _official_keys()
    wanted = {k: v for k, v in official.items()
              if k.startswith(("audio_branch.", "decoder_model.")) and "lora_" not in k}
    # RoBERTa layers 1-11 are elided in the list; the separator has no RoBERTa, so it is complete.
    state = SeparationNet(RELEASED).state_dict()
    ours = {k: (list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()}
    assert ours == wanted


@pytest.mark.slow
def test_query_encoder_names_match_the_release_clap_model() -> None:
    from clapsep_cli.network.encoders import AudioEncoder, TextEncoder

    official = _official_keys()
    prefix = "clap_model.model."
    wanted = {k[len(prefix):]: v for k, v in official.items()
              if k.startswith(prefix) and k[len(prefix):].startswith(("audio_", "text_branch", "text_projection"))
              and "_transform." not in k}
    ours = {**TextEncoder(RELEASED).state_dict(), **AudioEncoder(RELEASED).state_dict()}
    elided = [k for k in ours if k.startswith("text_branch.encoder.layer.") and not k.startswith(
        "text_branch.encoder.layer.0.")]
    assert len(elided) == 11 * 16
    kept = {k: (list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in ours.items() if k not in elided}
    assert kept == wanted
