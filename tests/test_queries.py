"""Query combination rules, the embedding cache, presets, `remove` and `embed`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from click.testing import CliRunner, Result

from clapsep_cli.cli import main
from clapsep_cli.errors import ClapsepError
from clapsep_cli.models import install, store
from clapsep_cli.network.architecture import TINY
from clapsep_cli.queries import presets
from clapsep_cli.queries.embedding import EmbeddingCache, combine, condition
from clapsep_cli.queries.spec import AudioRef, Query, parse_time
from tests.helpers import Artefacts, tone, write_audio


def run(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


class FakeEmbedder:
    """Deterministic pseudo-embeddings; counts encoder calls."""

    def __init__(self) -> None:
        self.text_calls: list[list[str]] = []

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        self.text_calls.append(list(texts))
        rows = [torch.randn(8, generator=torch.Generator().manual_seed(sum(map(ord, t)))) for t in texts]
        return F.normalize(torch.stack(rows), dim=-1)

    def embed_audio(self, wave48: torch.Tensor) -> torch.Tensor:
        return F.normalize(torch.ones(8), dim=-1)


def test_mean_of_identical_queries_is_the_query() -> None:
    e = F.normalize(torch.randn(8), dim=-1)
    assert torch.allclose(combine(torch.stack([e, e]), None, None, 8), e)


def test_sides_are_unit_norm_or_zero() -> None:
    a, b = F.normalize(torch.randn(2, 8), dim=-1)
    both = combine(torch.stack([a, b]), None, None, 8)
    assert torch.isclose(both.norm(), torch.tensor(1.0))
    assert torch.equal(combine(None, None, None, 8), torch.zeros(8))


def test_audio_weight_mixes_text_and_audio() -> None:
    text, audio = F.normalize(torch.randn(2, 8), dim=-1)
    assert torch.allclose(combine(text[None], audio[None], 0.0, 8), text)
    assert torch.allclose(combine(text[None], audio[None], 1.0, 8), audio)
    half = combine(text[None], audio[None], None, 8)
    assert torch.allclose(half, F.normalize(text + audio, dim=-1))


def test_positive_only_and_negative_only_conditions(tmp_path: Path) -> None:
    model, cache = FakeEmbedder(), EmbeddingCache(None, "x")
    pos = condition(model, Query(positive=("dog",)), cache, 8)[0]
    neg = condition(model, Query(negative=("dog",)), cache, 8)[0]
    assert torch.equal(pos[8:], torch.zeros(8)) and torch.equal(neg[:8], torch.zeros(8))
    assert torch.allclose(pos[:8], neg[8:])


def test_cache_hit_skips_the_encoder_and_model_change_invalidates(tmp_path: Path) -> None:
    model = FakeEmbedder()
    first = condition(model, Query(positive=("dog", "cat"), negative=("wind",)), EmbeddingCache(tmp_path, "a" * 64), 8)
    assert model.text_calls == [["dog", "cat"], ["wind"]]
    again = EmbeddingCache(tmp_path, "a" * 64)
    second = condition(model, Query(positive=("dog", "cat"), negative=("wind",)), again, 8)
    assert model.text_calls == [["dog", "cat"], ["wind"]] and again.hits == 3 and again.misses == 0
    assert torch.equal(first, second)
    other = EmbeddingCache(tmp_path, "b" * 64)
    condition(model, Query(positive=("dog",)), other, 8)
    assert model.text_calls[-1] == ["dog"] and other.misses == 1


@pytest.mark.parametrize("text,seconds", [("12.5", 12.5), ("1:02.5", 62.5), ("01:02:03.250", 3723.25), ("0", 0.0)])
def test_parse_time(text: str, seconds: float) -> None:
    assert parse_time(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "1:", "a", "1:75", "-3"])
def test_parse_time_rejects(bad: str) -> None:
    with pytest.raises(ClapsepError):
        parse_time(bad)


def test_audio_ref_regions(tmp_path: Path) -> None:
    assert AudioRef.parse("ref.wav@1.5-4") == AudioRef(Path("ref.wav"), 1.5, 4.0)
    assert AudioRef.parse("ref.wav@-0:03") == AudioRef(Path("ref.wav"), None, 3.0)
    assert AudioRef.parse("ref.wav") == AudioRef(Path("ref.wav"))
    weird = tmp_path / "take@1-2.wav"
    weird.write_bytes(b"x")
    assert AudioRef.parse(str(weird)).path == weird  # an existing file name wins
    with pytest.raises(ClapsepError, match="after its start"):
        AudioRef.parse("ref.wav@4-2")


def test_every_shipped_preset_validates_and_resolves(home: Path) -> None:
    good, bad = presets.load_all()
    assert bad == []
    assert len([p for p in good if p.source == "shipped"]) >= 15
    from clapsep_cli.models.loaded import ClapSep

    model = ClapSep(store.get_model(), torch.device("cpu"))
    cache = EmbeddingCache(None, model.installed.fingerprint)
    for preset in good:
        assert preset.description and (preset.query.positive or preset.query.negative)
        vector = condition(model, preset.query, cache, TINY.joint_embed_dim)
        assert vector.shape == (1, 2 * TINY.joint_embed_dim) and torch.isfinite(vector).all()


@pytest.fixture
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return presets.user_dir()


@pytest.mark.parametrize("body,message", [
    ('positive = ["a"]\ncolour = "red"\n', "unknown key 'colour'"),
    ('positive = "a"\nnegative = [1]\n', "'negative' must be a list of non-empty strings"),
    ('description = "x"\n', "needs at least one of"),
    ('positive = ["a"]\ntag = "Not A Tag"\n', "'tag' must be a file-name tag"),
    ('positive = ["a"]\nsuffix = "Not A Tag"\n', "'suffix' must be a file-name tag"),  # the old name, still read
    ('positive = ["a"]\ntag = "a"\nsuffix = "b"\n', "give 'tag' only"),
    ('positive = ["a"]\nresidual = "yes"\n', "'residual' must be true or false"),
    ('positive = ["a"]\naudio_weight = 2\n', "'audio_weight' must be a number between 0 and 1"),
    ('positive = ["a"\n', "not valid TOML"),
])
def test_bad_presets_name_file_key_and_problem(config_home: Path, body: str, message: str) -> None:
    config_home.mkdir(parents=True)
    (config_home / "broken.toml").write_text(body)
    with pytest.raises(ClapsepError) as err:
        presets.load("broken")
    assert str(config_home / "broken.toml") in str(err.value) and message in str(err.value)
    result = run("presets", "list", "--json")
    assert result.exit_code == 0 and message in result.stderr


def test_presets_cli_new_show_override_rm(config_home: Path) -> None:
    result = run("presets", "new", "dog", "-q", "a puppy yelps", "-n", "rain", "-d", "my dogs", "--residual")
    assert result.exit_code == 0, result.output
    assert Path(result.output.strip()) == config_home / "dog.toml"
    mine = presets.load("dog")
    assert mine.source == "user" and mine.query.positive == ("a puppy yelps",) and mine.residual
    listed = {p["name"]: p for p in json.loads(run("presets", "list", "--json").output)["presets"]}
    assert listed["dog"]["source"] == "user" and listed["birds"]["source"] == "shipped"
    assert "a puppy yelps" in run("presets", "show", "dog").output
    assert run("presets", "new", "dog", "-q", "x").exit_code == 1  # exists
    assert run("presets", "rm", "dog").exit_code == 0
    assert presets.load("dog").source == "shipped"
    result = run("presets", "rm", "birds")
    assert result.exit_code == 1 and "shipped" in result.output
    assert run("presets", "new", "Bad Name", "-q", "x").exit_code == 1


def test_unknown_preset_is_one_line(home: Path, tmp_path: Path) -> None:
    src = write_audio(tmp_path / "a.wav", tone(1.0, 32000), 32000)
    result = run("extract", "-p", "dogz", src)
    assert result.exit_code == 1 and "unknown preset 'dogz'" in result.output and "dog" in result.output


def test_preset_run_names_stem_writes_residual_and_second_run_uses_cache(
        tiny_files: Artefacts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLAPSEP_HOME", str(tmp_path / "store"))
    install.install(store.DEFAULT_MODEL, tiny_files.clap, tiny_files.layouts[1], tiny_files.tokenizer, config=TINY)
    src = write_audio(tmp_path / "a.wav", tone(2.0, 32000), 32000)
    first = json.loads(run("extract", "-p", "wind", src, "--json").output)
    assert Path(first["results"][0]["target"]).name == "a.wind.wav"
    assert Path(first["results"][0]["residual"]).name == "a.wind.residual.wav"  # the preset asks for it
    assert first["query_embeddings"]["computed"] == 4 and first["query_embeddings"]["text_encoder_loaded"]
    second = json.loads(run("extract", "-p", "wind", src, "--json", "--overwrite", "--no-residual").output)
    assert second["query_embeddings"] == {**second["query_embeddings"], "from_cache": 4, "computed": 0,
                                          "text_encoder_loaded": False}
    assert "residual" not in second["results"][0]


def test_remove_methods(home: Path, tmp_path: Path) -> None:
    src = write_audio(tmp_path / "a.wav", tone(3.0, 32000), 32000)
    neg = json.loads(run("remove", "dog", src, "-n", "speech", "--json").output)
    assert neg["method"] == "negative"
    assert neg["query"]["positive"] == ["speech"] and neg["query"]["negative"] == ["dog"]
    assert Path(neg["results"][0]["target"]).name == "a.without_dog.wav"
    sub = json.loads(run("remove", "dog", src, "--method", "subtract", "--residual", "--overwrite", "--json",
                         "-o", tmp_path / "sub.wav").output)
    kept, _ = sf.read(str(tmp_path / "sub.wav"))
    removed, _ = sf.read(sub["results"][0]["residual"])
    extracted = json.loads(run("extract", "dog", src, "--json", "-o", tmp_path / "ext.wav").output)
    stem, _ = sf.read(extracted["results"][0]["target"])
    source, _ = sf.read(str(src))
    assert np.max(np.abs(removed - stem)) < 1e-6
    assert np.max(np.abs(kept - (source - stem))) < 1e-6


def test_embed_exports_the_conditioning_vector(home: Path, tmp_path: Path) -> None:
    result = run("embed", "dog bark", "-p", "birds", "--export", tmp_path / "vec", "--json")
    assert result.exit_code == 0, result.output
    vec = np.load(tmp_path / "vec" / "birds.npy")
    assert vec.shape == (2 * TINY.joint_embed_dim,) and vec.dtype == np.float32
    from clapsep_cli.models.loaded import ClapSep

    model = ClapSep(store.get_model(), torch.device("cpu"))
    expected = condition(model, presets.load("birds").query, EmbeddingCache(None, "-"), TINY.joint_embed_dim)[0]
    assert np.allclose(vec, expected.numpy(), atol=1e-6)
    assert np.load(tmp_path / "vec" / "dog_bark.npy")[TINY.joint_embed_dim:].tolist() == [0.0] * TINY.joint_embed_dim


def test_a_preset_file_s_old_suffix_key_still_names_its_tag(config_home: Path) -> None:
    config_home.mkdir(parents=True)
    (config_home / "old.toml").write_text('positive = ["people talking"]\nsuffix = "spoken"\n')
    (config_home / "new.toml").write_text('positive = ["people talking"]\ntag = "spoken"\n')
    assert presets.load("old").tag == presets.load("old").query.tag == "spoken"
    assert presets.load("new").query.tag == "spoken"
