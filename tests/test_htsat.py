"""clapsep's HTS-AT and Swin modules against laion-clap's and torchlibrosa's own (the independent
references, installed by the test extra below Python 3.13): the same weights from the same seed,
the same clip embedding bit for bit, the same training-time randomness."""

from __future__ import annotations

import pytest
import torch

from clapsep_cli.network.architecture import RELEASED, TINY, HTSATConfig
from clapsep_cli.network.htsat import HTSAT
from clapsep_cli.network.swin import DropPath
from clapsep_cli.training.spec_augment import spec_augment
from testbed import official

pytestmark = pytest.mark.laion


def _pair(cfg: HTSATConfig, seed: int) -> tuple[HTSAT, torch.nn.Module]:
    torch.manual_seed(seed)
    ours = HTSAT(cfg)
    torch.manual_seed(seed)
    theirs = official.laion_htsat(cfg)
    return ours, theirs


def _weights_equal(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_a_seeded_build_draws_laion_clap_s_weights_and_tables() -> None:
    """Names, order and values: the Swin weights, and the DFT and mel tables torchlibrosa makes with librosa."""
    _weights_equal(*_pair(TINY.htsat, seed=3))


def _clip_embeddings(cfg: HTSATConfig) -> tuple[torch.Tensor, torch.Tensor]:
    ours, theirs = _pair(cfg, seed=4)
    state = official._jitter(theirs.state_dict(), torch.Generator().manual_seed(5))
    ours.load_state_dict(state)
    theirs.load_state_dict(state)
    clips = torch.randn(2, 480000, generator=torch.Generator().manual_seed(6)) * 0.1
    with torch.no_grad():
        return ours.eval().clip_embedding(clips), theirs.eval()({"waveform": clips}, device="cpu")["embedding"]


def test_the_clip_embedding_is_laion_clap_s_bit_for_bit() -> None:
    ours, theirs = _clip_embeddings(TINY.htsat)
    assert theirs.std() > 0.01
    assert torch.equal(ours, theirs)


@pytest.mark.slow
def test_the_released_geometry_builds_and_embeds_as_laion_clap() -> None:
    _weights_equal(*_pair(RELEASED.htsat, seed=7))
    ours, theirs = _clip_embeddings(RELEASED.htsat)
    assert torch.equal(ours, theirs)


def test_the_fused_block_computes_laion_clap_s_block() -> None:
    ours, theirs = _pair(TINY.htsat, seed=8)
    theirs.load_state_dict(official._jitter(theirs.state_dict(), torch.Generator().manual_seed(9)))
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 64 * 64, 16)
    for mine, laion in zip(ours.layers[0].blocks, theirs.layers[0].blocks):  # unshifted, then shifted
        with torch.no_grad():
            expected = laion.eval()(x)[0]
            assert torch.equal(mine.eval().forward_exact(x), expected)
            torch.testing.assert_close(mine(x), expected, atol=2e-5, rtol=0)


def test_training_randomness_is_laion_clap_s() -> None:
    """Stochastic depth and SpecAugment draw what laion-clap's and torchlibrosa's draw from the same seed."""
    from laion_clap.clap_module.htsat import DropPath as LaionDropPath
    from torchlibrosa.augmentation import SpecAugmentation

    x = torch.randn(8, 16, 4)
    torch.manual_seed(10)
    mine = DropPath(0.3).train()(x)
    torch.manual_seed(10)
    assert torch.equal(mine, LaionDropPath(0.3).train()(x))
    assert (mine == 0).any() and (mine != 0).any()
    spec = torch.randn(3, 1, 1001, 64)
    torch.manual_seed(11)
    augmented = spec_augment(spec.clone())
    torch.manual_seed(11)
    expected = SpecAugmentation(time_drop_width=64, time_stripes_num=2, freq_drop_width=8, freq_stripes_num=2)(
        spec.clone())
    assert torch.equal(augmented, expected)
    assert (augmented == 0).sum() > (spec == 0).sum()


def test_the_lightning_layout_s_stft_tensors_are_torchlibrosa_s() -> None:
    from torchlibrosa import ISTFT, STFT

    tables = official.lightning_state({}, {})
    for name, module in (("stft", STFT(n_fft=1024, hop_length=320)), ("istft", ISTFT(n_fft=1024, hop_length=320))):
        for key, value in module.state_dict().items():
            assert torch.equal(tables[f"{name}.{key}"], value), key
