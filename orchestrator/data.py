"""Calibration, scoring and evaluation token sets, each with fixed content and a content hash.

Sources: deterministic synthetic tokens (``synthetic``), a local ``.txt``/``.jsonl``/``.parquet``
file, or a Hugging Face dataset (``hf:<name>[:<config>[:<split>]]``) when the network allows. Text is
cut into windows of ``seq_len`` tokens; the three sets take disjoint windows (calibration, then
scoring from the front, evaluation from the back, or from ``eval_source`` when given), so a scheme is
never judged on the text it was calibrated or scored on. Each set's hash (sha256 of its tokens) goes
into the score-cache key and into the tracking tags. Arrays are numpy; torch stays in the GPU stages.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orchestrator.config import DataConfig

TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")
Tokenize = Callable[[str], list[int]]


class DataError(ValueError):
    """A data source that cannot give the batches asked for; one line, names the field."""


@dataclass(frozen=True)
class TokenSet:
    """``tokens`` has shape (batches, batch_size, seq_len)."""

    name: str
    tokens: np.ndarray
    source: str

    @property
    def hash(self) -> str:
        h = hashlib.sha256(str(self.tokens.shape).encode())
        h.update(np.ascontiguousarray(self.tokens, dtype=np.int64).tobytes())
        return h.hexdigest()[:16]

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.size)


@dataclass(frozen=True)
class ImagePrompts:
    """Image+text prompts for the multimodal path: text, an image, then answer tokens.

    ``input_ids`` is (n, T) with ``image_tokens`` image placeholders between the vision start and
    end tokens; ``pixel_values`` is (n, patches, patch_dim), the flattened patches the Qwen2.5-VL
    vision tower takes; the answer runs from ``answer_start`` to the end of each row.
    """

    input_ids: np.ndarray
    pixel_values: np.ndarray
    grid_thw: tuple[int, int, int]
    answer_start: int

    @property
    def hash(self) -> str:
        h = hashlib.sha256(str((self.input_ids.shape, self.grid_thw, self.answer_start)).encode())
        h.update(np.ascontiguousarray(self.input_ids, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(self.pixel_values, dtype=np.float32).tobytes())
        return h.hexdigest()[:16]


@dataclass(frozen=True)
class DataSets:
    calib: TokenSet
    score: TokenSet
    eval: TokenSet
    images: ImagePrompts | None = None

    def hashes(self) -> dict[str, str]:
        out = {s.name: s.hash for s in (self.calib, self.score, self.eval)}
        if self.images is not None:
            out["images"] = self.images.hash
        return out


IMAGE_TEXT_TOKENS, IMAGE_ANSWER_TOKENS = 8, 16  # per image prompt, around the image tokens


def check_image_prompt_length(seq_len: int) -> None:
    """Image prompts take their text and answer tokens from one ``seq_len`` row of text."""
    need = IMAGE_TEXT_TOKENS + IMAGE_ANSWER_TOKENS
    if seq_len < need:
        raise DataError(f"data.seq_len={seq_len}: image prompts need at least {need} tokens")


def synthetic_image_prompts(
    n: int, text: TokenSet, vision: object, token_ids: tuple[int, int, int], seed: int
) -> ImagePrompts:
    """``n`` prompts of 8 text tokens, one seeded random 56x56 image (4x4 patches of 14 px, merged
    2x2 into 4 image tokens) and 16 answer tokens; the text comes from the evaluation set, so the
    answers are real text when the data is."""
    image_id, start_id, end_id = token_ids
    merge = int(getattr(vision, "spatial_merge_size", 2))
    grid = (1, 2 * merge, 2 * merge)
    patches = grid[0] * grid[1] * grid[2]
    patch_dim = (
        int(getattr(vision, "in_channels", 3))
        * int(getattr(vision, "temporal_patch_size", 2))
        * int(getattr(vision, "patch_size", 14)) ** 2
    )
    rows = text.tokens.reshape(-1, text.tokens.shape[-1])
    check_image_prompt_length(rows.shape[1])
    text_end, answer_end = IMAGE_TEXT_TOKENS, IMAGE_TEXT_TOKENS + IMAGE_ANSWER_TOKENS
    rng = np.random.default_rng(seed)
    ids = []
    for i in range(n):
        row = rows[i % len(rows)]
        image = [start_id] + [image_id] * (patches // merge**2) + [end_id]
        ids.append(np.concatenate([row[:text_end], image, row[text_end:answer_end]]))
    pixels = rng.standard_normal((n, patches, patch_dim)).astype(np.float32)
    return ImagePrompts(np.stack(ids).astype(np.int64), pixels, grid, text_end + len(image))


def byte_tokenizer(vocab_size: int) -> Tokenize:
    """UTF-8 bytes as token ids: lets presets without a tokenizer read real text."""
    if vocab_size < 256:
        raise DataError(f"byte tokenizer needs vocab_size >= 256, model has {vocab_size}")
    return lambda text: list(text.encode("utf-8"))


def hf_tokenizer(source: str, revision: str | None, trust_remote_code: bool) -> Tokenize:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(
        source, revision=revision, trust_remote_code=trust_remote_code
    )
    return lambda text: tok(text, add_special_tokens=False)["input_ids"]


def check_source(source: str, field: str, text_field: str = "text") -> None:
    """Fail early, with one line, on a file that is missing, empty, unreadable or of an unknown type."""
    if source == "synthetic" or source.startswith("hf:"):
        return
    path = Path(source).expanduser()
    if path.suffix not in TEXT_SUFFIXES:
        raise DataError(
            f"{field}={source!r}: unknown file type; use one of {', '.join(TEXT_SUFFIXES)}"
        )
    if not path.is_file():
        raise DataError(f"{field}={source!r}: file not found")
    try:
        text = read_text(path, text_field)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{field}={source!r}: unreadable ({e.__class__.__name__}: {e})") from None
    if not text.strip():
        raise DataError(f"{field}={source!r}: file holds no text")


def read_text(path: Path, text_field: str = "text") -> str:
    if path.suffix == ".txt":
        return path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
        return "\n".join(str(r[text_field]) for r in lines)
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=[text_field])
    return "\n".join(str(x) for x in table.column(text_field).to_pylist())


def _read_hf(spec: str, text_field: str) -> str:
    import datasets  # optional: only when the network allows

    parts = spec.removeprefix("hf:").split(":")
    name, config, split = (
        parts[0],
        (parts[1] if len(parts) > 1 else None),
        parts[2] if len(parts) > 2 else "test",
    )
    ds = datasets.load_dataset(name, config, split=split)
    return "\n".join(str(x) for x in ds[text_field])


def _load_text(source: str, text_field: str) -> str:
    if source.startswith("hf:"):
        return _read_hf(source, text_field)
    return read_text(Path(source).expanduser(), text_field)


def _windows(ids: np.ndarray, seq_len: int) -> np.ndarray:
    n = len(ids) // seq_len
    return ids[: n * seq_len].reshape(n, seq_len)


def _take(windows: np.ndarray, start: int, batches: int, batch_size: int) -> np.ndarray:
    return windows[start : start + batches * batch_size].reshape(batches, batch_size, -1)


def build_datasets(
    cfg: DataConfig, vocab_size: int, tokenize: Tokenize | None, seed: int
) -> DataSets:
    """The three disjoint sets of one sweep; same config and seed give the same tokens anywhere."""
    shape = (cfg.batch_size, cfg.seq_len)
    counts = {"calib": cfg.calib_batches, "score": cfg.score_batches, "eval": cfg.eval_batches}
    if cfg.source == "synthetic":
        rng = np.random.default_rng(seed)
        sets = {k: rng.integers(0, vocab_size, size=(n, *shape)) for k, n in counts.items()}
        return DataSets(*(TokenSet(k, v, "synthetic") for k, v in sets.items()))
    if tokenize is None:
        raise DataError(f"data.source={cfg.source!r}: text needs a tokenizer for this model")
    windows = _windows(np.asarray(tokenize(_load_text(cfg.source, cfg.text_field))), cfg.seq_len)
    per = cfg.batch_size
    front = (cfg.calib_batches + cfg.score_batches) * per
    back = cfg.eval_batches * per
    if cfg.eval_source:
        eval_windows = _windows(
            np.asarray(tokenize(_load_text(cfg.eval_source, cfg.text_field))), cfg.seq_len
        )
        _require(len(eval_windows), back, "data.eval_source", cfg.seq_len)
        _require(len(windows), front, "data.source", cfg.seq_len)
        eval_start, eval_src = 0, cfg.eval_source
    else:
        _require(len(windows), front + back, "data.source", cfg.seq_len)
        eval_windows, eval_start, eval_src = windows, len(windows) - back, cfg.source
    return DataSets(
        TokenSet("calib", _take(windows, 0, cfg.calib_batches, per), cfg.source),
        TokenSet(
            "score", _take(windows, cfg.calib_batches * per, cfg.score_batches, per), cfg.source
        ),
        TokenSet("eval", _take(eval_windows, eval_start, cfg.eval_batches, per), eval_src),
    )


def _require(have: int, want: int, field: str, seq_len: int) -> None:
    if have < want:
        raise DataError(
            f"{field}: {have} windows of {seq_len} tokens, need {want}; "
            "use more text or fewer/shorter batches"
        )
