"""The model store: import (every layout), checks on bad checkpoints, list/path/rm, offline."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner, Result
from torch import nn

from clapsep_cli.cli import main
from clapsep_cli.errors import ClapsepError
from clapsep_cli.models import install, store
from clapsep_cli.network.architecture import TINY
from testbed import official
from tests.helpers import Artefacts, tone, write_audio


def run(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def test_store_root_follows_clapsep_home(empty_home: Path) -> None:
    assert store.store_root() == empty_home
    assert run("models", "path").output.strip() == str(empty_home)


def test_store_root_defaults_to_platformdirs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CLAPSEP_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert store.store_root() == tmp_path / "xdg" / "clapsep"


@pytest.mark.parametrize("layout", [1, 2, 3])
def test_import_each_layout_records_sources_and_loads(empty_home: Path, tiny_files: Artefacts, layout: int) -> None:
    model = install.install("m", tiny_files.clap, tiny_files.layouts[layout], tiny_files.tokenizer, config=TINY)
    manifest = model.manifest
    assert manifest["clapsep_layout"] == layout
    assert manifest["sources"]["clapsep"]["sha256"] == install.sha256_file(tiny_files.layouts[layout])
    assert sorted(p.name for p in model.path.iterdir()) == [
        "audio.safetensors", "manifest.json", "separator.safetensors", "text.safetensors", "tokenizer"]
    from safetensors.torch import load_file

    sep = load_file(model.path / "separator.safetensors")
    assert not any("lora" in k for k in sep)  # merged
    assert not any(k.startswith(("clap_model", "stft", "istft")) for k in sep)


def test_same_weights_give_same_fingerprint_across_layouts(empty_home: Path, tiny_files: Artefacts) -> None:
    a = install.install("a", tiny_files.clap, tiny_files.layouts[1], None, config=TINY)
    b = install.install("b", tiny_files.clap, tiny_files.layouts[3], None, config=TINY)
    assert a.fingerprint == b.fingerprint


def test_models_cli_import_list_rm(empty_home: Path, tiny_files: Artefacts) -> None:
    result = run("models", "import", "--clap", tiny_files.clap, "--clapsep", tiny_files.layouts[2],
                 "--tokenizer", tiny_files.tokenizer, "--name", "mine", "--architecture", "tiny")
    assert result.exit_code == 0, result.output
    listed = json.loads(run("models", "list", "--json").output)
    assert [m["name"] for m in listed["models"]] == ["mine"] and listed["models"][0]["tokenizer"] is True
    assert run("models", "path", "mine").output.strip() == str(empty_home / "models" / "mine")
    again = run("models", "import", "--clap", tiny_files.clap, "--clapsep", tiny_files.layouts[2], "--name", "mine",
                "--architecture", "tiny")
    assert again.exit_code == 1 and "already installed" in again.output
    assert run("models", "rm", "mine").exit_code == 0
    assert json.loads(run("models", "list", "--json").output)["models"] == []


def _query_biases(state: dict[str, torch.Tensor]) -> list[str]:
    return sorted(k for k in state if k.startswith("clap_model.model.audio_branch.")
                  and k.endswith((".attn.qkv.bias", ".attn.proj.bias")))


def _retrained_query_state(files: Artefacts) -> dict[str, torch.Tensor]:
    """The whole training module, its query encoder's attention biases unlike the CLAP checkpoint's."""
    state = official.lightning_state(files.training_state, files.clap_state)
    gen = torch.Generator().manual_seed(7)
    for key in _query_biases(state):
        state[key] = state[key] + torch.randn(state[key].shape, generator=gen) * 0.5
    return state


CHANGES_ONLY_FORMS = {
    "plain": lambda d: d,
    "wrapped": lambda d: {"epoch": 149, "global_step": 231000, "state_dict": d},
    "module-prefixed": lambda d: {"module." + k: v for k, v in d.items()},
    "wrapped module-prefixed": lambda d: {"state_dict": {"module." + k: v for k, v in d.items()}},
}


@pytest.fixture(scope="module")
def full_layout_stem(tiny_files: Artefacts, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """An audio-query stem made with the whole training module's state dict (layout 3)."""
    root = tmp_path_factory.mktemp("full")
    full = root / "full.ckpt"
    torch.save({"state_dict": _retrained_query_state(tiny_files)}, full)
    src = write_audio(root / "in.wav", tone(2.0, 32000), 32000)
    write_audio(root / "ref.wav", tone(1.0, 44100, freq=880), 44100)
    mp = pytest.MonkeyPatch()
    mp.setenv("CLAPSEP_HOME", str(root / "store"))
    model = install.install(store.DEFAULT_MODEL, tiny_files.clap, full, None, config=TINY)
    assert model.manifest["clapsep_layout"] == 3
    result = run("extract", "", src, "--query-audio", root / "ref.wav")
    mp.undo()
    assert result.exit_code == 0, result.output
    return root, sf.read(root / "in.like_ref.wav")[0]


@pytest.mark.parametrize("form", CHANGES_ONLY_FORMS)
def test_changes_only_layout_as_the_official_filter_writes_it(
        empty_home: Path, tiny_files: Artefacts, full_layout_stem: tuple[Path, np.ndarray], tmp_path: Path,
        form: str) -> None:
    """The official save filter keeps the query encoder's attention biases too; they import and are used."""
    whole = _retrained_query_state(tiny_files)
    saved = official.official_save_filter(whole)
    biases = _query_biases(saved)
    assert biases and len(biases) == 2 * sum(TINY.htsat.depths)  # attn.qkv.bias and attn.proj.bias per block
    path = tmp_path / "best_model.ckpt"
    torch.save(CHANGES_ONLY_FORMS[form](saved), path)
    model = install.install(store.DEFAULT_MODEL, tiny_files.clap, path, None, config=TINY)
    assert model.manifest["clapsep_layout"] == 1
    assert model.manifest["query_tensors_from_clapsep"]["tensors"] == len(biases)
    assert model.manifest["query_tensors_from_clapsep"]["differ_from_clap"] == len(biases)
    root, expected = full_layout_stem
    src = write_audio(tmp_path / "in.wav", sf.read(root / "in.wav")[0], 32000)
    result = run("extract", "", src, "--query-audio", root / "ref.wav")
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(sf.read(tmp_path / "in.like_ref.wav")[0], expected)


def test_audio_query_embedding_equals_the_spaces(empty_home: Path, tiny_files: Artefacts, tmp_path: Path) -> None:
    """The Space builds its module with the CLAP checkpoint loaded, then load_state_dict(file, strict=False)."""
    from clapsep_cli.models.loaded import ClapSep
    from clapsep_cli.network.encoders import AudioEncoder, fit_query_clip

    saved = official.official_save_filter(_retrained_query_state(tiny_files))
    path = tmp_path / "best_model.ckpt"
    torch.save(saved, path)
    model = install.install(store.DEFAULT_MODEL, tiny_files.clap, path, None, config=TINY)

    def clap_audio_encoder() -> AudioEncoder:
        encoder = AudioEncoder(TINY).eval()
        encoder.load_state_dict({k: v for k, v in tiny_files.clap_state.items()
                                 if k.startswith(("audio_branch.", "audio_projection."))})
        return encoder

    space = nn.Module()
    space.clap_model = nn.Module()
    space.clap_model.model = clap_audio_encoder()
    loaded = space.load_state_dict(saved, strict=False)
    assert not set(_query_biases(saved)) & set(loaded.unexpected_keys)  # the Space loads those tensors
    clip = torch.from_numpy(tone(3.0, 48000, seed=4)[:, 0])
    with torch.no_grad():
        expected = nn.functional.normalize(space.clap_model.model(fit_query_clip(clip)).mean(0), dim=-1)
        clap_only = nn.functional.normalize(clap_audio_encoder()(fit_query_clip(clip)).mean(0), dim=-1)
    got = ClapSep(model, torch.device("cpu")).embed_audio(clip)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, clap_only, atol=1e-3)  # the biases matter


def _bad_checkpoints(tmp: Path, files: Artefacts) -> dict[str, tuple[Path, str]]:
    truncated = tmp / "truncated.ckpt"
    truncated.write_bytes(files.layouts[2].read_bytes()[:5000])
    missing = {k: v for k, v in files.training_state.items() if k != "decoder_model.mask_net.0.weight"}
    missing_path = tmp / "missing.ckpt"
    torch.save(missing, missing_path)
    partial_lora = {k: v for k, v in files.training_state.items()
                    if k != "audio_branch.layers.0.blocks.1.attn.proj.lora_A"}
    partial_path = tmp / "partial.ckpt"
    torch.save(partial_lora, partial_path)
    shapes = dict(files.training_state)
    shapes["decoder_model.film.norm.weight"] = torch.zeros(3)
    shape_path = tmp / "shape.ckpt"
    torch.save(shapes, shape_path)
    extra = dict(files.training_state)
    extra["decoder_model.phase_net.0.weight"] = torch.zeros(2, 2)
    extra_path = tmp / "extra.ckpt"
    torch.save(extra, extra_path)
    changes_only = official.official_save_filter(official.lightning_state(files.training_state, files.clap_state))
    query_lora = dict(changes_only)
    query_lora["clap_model.model.audio_branch.layers.0.blocks.0.attn.qkv.lora_A"] = torch.zeros(4, 8)
    query_lora_path = tmp / "query_lora.ckpt"
    torch.save(query_lora, query_lora_path)
    query_shape = dict(changes_only)
    query_shape["clap_model.model.audio_branch.layers.0.blocks.0.attn.proj.bias"] = torch.zeros(5)
    query_shape_path = tmp / "query_shape.ckpt"
    torch.save(query_shape, query_shape_path)
    text = tmp / "notes.txt"
    text.write_text("hello")
    return {
        "truncated": (truncated, "not a readable PyTorch checkpoint"),
        "not a checkpoint": (text, "not a readable PyTorch checkpoint"),
        "clap as clapsep": (files.clap, "not a CLAPSep checkpoint"),
        "missing weight": (missing_path, "decoder_model.mask_net.0.weight"),
        "partial lora": (partial_path, "layers.0.blocks.1.attn.proj.lora_A"),
        "shape": (shape_path, "decoder_model.film.norm.weight has shape [3]"),
        "unexpected": (extra_path, "unexpected tensors: decoder_model.phase_net.0.weight"),
        "unexpected query tensor": (
            query_lora_path, "unexpected tensor clap_model.model.audio_branch.layers.0.blocks.0.attn.qkv.lora_A"),
        "query tensor shape": (
            query_shape_path, "clap_model.model.audio_branch.layers.0.blocks.0.attn.proj.bias has shape [5]"),
    }


def test_bad_checkpoints_fail_with_a_named_reason_and_write_nothing(
        empty_home: Path, tiny_files: Artefacts, tmp_path: Path) -> None:
    for case, (path, message) in _bad_checkpoints(tmp_path, tiny_files).items():
        with pytest.raises(ClapsepError, match=message.replace("[", r"\[").replace("]", r"\]")):
            install.install("bad", tiny_files.clap, path, None, config=TINY)
        models = empty_home / "models"
        assert not models.exists() or list(models.iterdir()) == [], case


@pytest.mark.parametrize("content", [b"\x00" * 100, b"hello, not a checkpoint\n"])
def test_bad_checkpoint_through_the_cli_is_one_line(empty_home: Path, tiny_files: Artefacts, tmp_path: Path,
                                                    content: bytes) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(content)
    result = run("models", "import", "--clap", junk, "--clapsep", tiny_files.layouts[1])
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("clapsep:")]
    assert errors == [f"clapsep: error: {junk}: not a readable PyTorch checkpoint (corrupt or not a checkpoint)"]


def test_wrong_clap_checkpoint_is_named(empty_home: Path, tiny_files: Artefacts, tmp_path: Path) -> None:
    half = {k: v for k, v in tiny_files.clap_state.items() if not k.startswith("text_projection.")}
    path = official.write_clap(tmp_path / "half.pt", half)
    with pytest.raises(ClapsepError, match=r"weights missing: text_projection\.0\.weight"):
        install.install("x", path, tiny_files.layouts[1], None, config=TINY)


def test_text_query_without_tokenizer_fails_clearly_audio_query_works(
        empty_home: Path, tiny_files: Artefacts, tmp_path: Path) -> None:
    install.install(store.DEFAULT_MODEL, tiny_files.clap, tiny_files.layouts[1], None, config=TINY)
    src = write_audio(tmp_path / "in.wav", tone(2.0, 32000), 32000)
    started = time.monotonic()
    result = run("extract", "dog", src)
    assert time.monotonic() - started < 30
    assert result.exit_code == 1 and "tokenizer is not installed" in result.output
    ref = write_audio(tmp_path / "ref.wav", tone(1.0, 44100, freq=880), 44100)
    result = run("extract", "", src, "--query-audio", ref)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "in.like_ref.wav").is_file()


def test_tokenizer_guard_rejects_a_hollow_tokenizer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers 5 can build a 5-token tokenizer from missing files; that must not pass."""
    import transformers

    from clapsep_cli.errors import ModelMissingError
    from clapsep_cli.network.encoders import Tokenizer

    tok = official.write_tokenizer(tmp_path / "tok")
    assert Tokenizer(tok, 77)(["dog"])["input_ids"][0, 1] > 3  # the real files give real tokens
    specials = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
    hollow = transformers.RobertaTokenizer(vocab=specials, merges=[])
    monkeypatch.setattr(transformers.RobertaTokenizer, "from_pretrained", classmethod(lambda cls, *a, **k: hollow))
    with pytest.raises(ModelMissingError, match="loaded 5 tokens"):
        Tokenizer(tok, 77)


@pytest.mark.parametrize("part", ["separator", "text", "audio"])
def test_fast_loading_equals_building_then_loading(home: Path, part: str) -> None:
    """Parts are built without random initialisation; every tensor must still come out right."""
    from safetensors.torch import load_file

    from clapsep_cli.network.encoders import AudioEncoder, TextEncoder
    from clapsep_cli.network.separation import SeparationNet

    builder = {"separator": SeparationNet, "text": TextEncoder, "audio": AudioEncoder}[part]
    model = store.get_model()
    fast = model.load(part, builder, torch.device("cpu"))
    slow = builder(model.config)
    saved = load_file(model.path / f"{part}.safetensors")
    slow.load_state_dict(saved)
    fast_tensors = dict(fast.named_parameters()) | dict(fast.named_buffers())
    slow_tensors = dict(slow.named_parameters()) | dict(slow.named_buffers())  # non-persistent buffers too
    assert fast_tensors.keys() == slow_tensors.keys()
    for name, tensor in slow_tensors.items():
        assert torch.equal(fast_tensors[name], tensor), name
    computed = sorted(slow_tensors.keys() - saved.keys())  # made by the constructor, in no checkpoint
    if part == "text":
        assert computed == ["text_branch.embeddings.position_ids", "text_branch.embeddings.token_type_ids"]
        assert torch.equal(fast.text_branch.embeddings.position_ids[0], torch.arange(514))


class _Computed(nn.Module):
    """A layer with weights and a table its constructor computes, kept out of checkpoints."""

    def __init__(self, table_from_empty: bool = False) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 4)
        table = torch.empty(6).fill_(2.0) if table_from_empty else torch.hann_window(6)
        self.register_buffer("table", table, persistent=False)


def test_weights_on_meta_keeps_computed_tensors_and_changes_nothing_outside() -> None:
    import threading

    from clapsep_cli.network.fast_build import check_materialised, weights_on_meta

    state = _Computed().state_dict()
    seen_elsewhere: list[torch.device] = []
    with weights_on_meta():
        layer = _Computed()
        other = threading.Thread(target=lambda: seen_elsewhere.append(nn.Linear(2, 2).weight.device))
        other.start()
        other.join()
    assert layer.linear.weight.is_meta and not layer.table.is_meta
    assert seen_elsewhere == [torch.device("cpu")]  # another thread builds as usual meanwhile
    assert not nn.Linear(2, 2).weight.is_meta and nn.init.normal_(torch.zeros(100)).std() > 0.5  # and afterwards
    layer.load_state_dict(state, assign=True)
    check_materialised(layer)
    assert torch.equal(layer.table, torch.hann_window(6)) and torch.equal(layer.linear.weight, state["linear.weight"])
    with weights_on_meta():
        hollow = _Computed(table_from_empty=True)
    hollow.load_state_dict(state, assign=True)
    with pytest.raises(RuntimeError, match="tensors no checkpoint filled: table"):
        check_materialised(hollow)


def test_pickled_objects_need_trust_pickle(empty_home: Path, tiny_files: Artefacts, tmp_path: Path) -> None:
    import argparse

    data = torch.load(tiny_files.layouts[3], weights_only=True)
    data["hyper_parameters"] = argparse.Namespace(lr=1e-4)  # as Lightning checkpoints often carry
    path = tmp_path / "lightning.ckpt"
    torch.save(data, path)
    args = ["models", "import", "--clap", tiny_files.clap, "--clapsep", path, "--architecture", "tiny"]
    refused = run(*args)
    assert refused.exit_code == 1 and "run again with --trust-pickle" in refused.output
    assert run(*args, "--trust-pickle").exit_code == 0
