"""Calibration, scoring and evaluation token sets, each with fixed content and a content hash.

Sources: deterministic synthetic tokens (``synthetic``), a local ``.txt``/``.jsonl``/``.parquet``
file, or a Hugging Face dataset (``hf:<name>[:<config>[:<split>]]``) when the network allows. Text
is cut into windows of ``seq_len`` tokens; the three sets take disjoint windows (calibration, then
scoring from the front, evaluation from the back, or from ``eval_source`` when given), so a scheme
is never judged on the text it was calibrated or scored on. Each set's hash (sha256 of its tokens)
goes into the score-cache key and into the tracking tags. Arrays are numpy; torch stays in the GPU
stages.

Image+text records (encoded by ``images.py``) mix in as rows of their own, right-padded to
``seq_len``, split the same way (calibration and scoring from the front of the records, evaluation
from the back); such a set also carries masks, pixels and the image files' hashes, all hashed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from orchestrator.core.config import DataConfig, DataError

TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")
Tokenize = Callable[[str], list[int]]


@dataclass(frozen=True)
class TokenSet:
    """``tokens`` has shape (batches, batch_size, seq_len).

    A text-only set is all real tokens, each (but a row's first) a target. A set with image+text
    rows also carries, per position, ``attention`` (a real token, not padding) and ``targets`` (a
    token that counts in a metric or loss: every real token of a text row but its first, only the
    answer tokens of an image row) and ``mm_types`` (the processor's ``mm_token_type_ids``: 1 on
    an image token, else 0; with ``image_grid_thw`` it is what gives image rows M-RoPE positions);
    per row, ``image_rows``; per batch, the ``pixels`` and ``grids`` of its image rows in row order;
    the sha256 of each image row's file (``image_shas``); and ``settings``, the fingerprint of the
    processor settings that encoded them.
    """

    name: str
    tokens: np.ndarray
    source: str
    attention: np.ndarray | None = None
    targets: np.ndarray | None = None
    image_rows: np.ndarray | None = None
    pixels: tuple[np.ndarray, ...] = ()
    grids: tuple[np.ndarray, ...] = ()
    image_shas: tuple[str, ...] = ()
    settings: str = ""
    mm_types: np.ndarray | None = None

    @property
    def hash(self) -> str:
        h = hashlib.sha256(str(self.tokens.shape).encode())
        h.update(np.ascontiguousarray(self.tokens, dtype=np.int64).tobytes())
        if self.image_rows is None:
            return h.hexdigest()[:16]  # text-only: the hash it always had, so caches stay valid
        h.update(json.dumps([self.settings, *self.image_shas]).encode())
        for a in (self.attention, self.targets, self.image_rows):
            h.update(np.ascontiguousarray(a, dtype=np.bool_).tobytes())
        h.update(np.ascontiguousarray(self.mm_types, dtype=np.int8).tobytes())
        for px, grid in zip(self.pixels, self.grids, strict=True):
            h.update(np.ascontiguousarray(px, dtype=np.float32).tobytes())
            h.update(np.ascontiguousarray(grid, dtype=np.int64).tobytes())
        return h.hexdigest()[:16]

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.size)


@dataclass(frozen=True)
class DataSets:
    calib: TokenSet
    score: TokenSet
    eval: TokenSet

    def hashes(self) -> dict[str, str]:
        return {s.name: s.hash for s in (self.calib, self.score, self.eval)}


class Sample(Protocol):
    """An encoded image+text record (``images.Encoded``): ``ids[answer_start:]`` is the answer.
    Read-only members, which a frozen record like ``Encoded`` provides."""

    @property
    def ids(self) -> np.ndarray: ...
    @property
    def answer_start(self) -> int: ...
    @property
    def pixels(self) -> np.ndarray: ...
    @property
    def grid(self) -> np.ndarray: ...
    @property
    def image_sha(self) -> str: ...
    @property
    def mm_types(self) -> np.ndarray: ...


def byte_tokenizer(vocab_size: int) -> Tokenize:
    """UTF-8 bytes as token ids: lets presets without a tokenizer read real text."""
    if vocab_size < 256:
        raise DataError(f"byte tokenizer needs vocab_size >= 256, model has {vocab_size}")
    return lambda text: list(text.encode("utf-8"))


def load_tokenizer(
    source: str, revision: str | None, trust_remote_code: bool, label: str | None = None
) -> Any:
    """The model's own tokenizer, refused (``label``: the config field and value to name) when it
    does not load or has no vocabulary: transformers 5 builds an empty tokenizer for a folder
    without tokenizer files instead of failing, and every window would then come out empty long
    after the checks. Text and image+text data both read it here."""
    from transformers import AutoTokenizer

    label = label or f"model.source={source!r}"
    try:
        tok = AutoTokenizer.from_pretrained(
            source, revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
        raise DataError(f"{label}: its tokenizer does not load ({first[:160]})") from None
    if len(tok) <= len(set(tok.all_special_ids)):  # an empty one holds its special tokens
        raise DataError(
            f"{label}: has no tokenizer (no vocabulary beyond special tokens; the folder lacks "
            "tokenizer.json or the tokenizer's vocabulary files); text data needs the model's "
            "tokenizer: add its files, or use data.source=synthetic"
        )
    return tok


def hf_tokenizer(
    source: str, revision: str | None, trust_remote_code: bool, label: str | None = None
) -> Tokenize:
    """The model's own tokenizer (:func:`load_tokenizer`) as a function from text to ids; text
    that comes out as no ids is refused naming ``label``."""
    label = label or f"model.source={source!r}"
    tok = load_tokenizer(source, revision, trust_remote_code, label)

    def tokenize(text: str) -> list[int]:
        ids: list[int] = tok(text, add_special_tokens=False)["input_ids"]
        if not ids and text.strip():
            raise DataError(
                f"{label}: its tokenizer turns {len(text)} characters of text into no token "
                "ids; use the model's own tokenizer files"
            )
        return ids

    return tokenize


def check_source(source: str, field: str, text_field: str = "text") -> None:
    """Fail early, with one line, on a file that is missing, empty, unreadable or of an unknown
    type, or whose records lack the text (``data.text_field``)."""
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
    except DataError as e:
        raise DataError(f"{field}={source!r}: {e}") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{field}={source!r}: unreadable ({e.__class__.__name__}: {e})") from None
    if not text.strip():
        raise DataError(f"{field}={source!r}: file holds no text")


# what a JSONL line holds instead of an object, in JSON's words
_JSON_TYPES: dict[type, str] = {
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def read_text(path: Path, text_field: str = "text") -> str:
    """The text of a ``.txt`` file, or the ``text_field`` of every JSONL record or Parquet row
    joined by newlines; a record that is not an object or lacks the field is a :class:`DataError`
    naming its line (the caller adds the source)."""
    if path.suffix == ".txt":
        return path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        texts = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            record = json.loads(line)
            if not isinstance(record, dict):
                raise DataError(
                    f"line {n} is a JSON {_JSON_TYPES.get(type(record), 'value')}, not an "
                    f"object; each line must be an object holding the text under "
                    f"{text_field!r} (data.text_field)"
                )
            if text_field not in record:
                keys = ", ".join(map(repr, list(record)[:8])) or "none"
                raise DataError(
                    f"line {n} has no {text_field!r} key (data.text_field; its keys: {keys}); "
                    "set data.text_field to the key that holds the text"
                )
            texts.append(str(record[text_field]))
        return "\n".join(texts)
    import pyarrow.parquet as pq

    columns = pq.read_schema(path).names
    if text_field not in columns:
        raise DataError(
            f"no {text_field!r} column (data.text_field; its columns: {', '.join(columns)}); "
            "set data.text_field to the column that holds the text"
        )
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


@dataclass(frozen=True)
class ImageSamples:
    """Encoded image+text records and how they mix into the sets: ``fraction`` of the rows of
    calibration and scoring, ``eval_fraction`` (default: the same) of the evaluation's."""

    samples: Sequence[Sample]
    fraction: float
    source: str
    pad_id: int
    settings: str
    eval_fraction: float | None = None

    def fraction_of(self, name: str) -> float:
        if name == "eval" and self.eval_fraction is not None:
            return self.eval_fraction
        return self.fraction


def build_datasets(
    cfg: DataConfig,
    vocab_size: int,
    tokenize: Tokenize | None,
    seed: int,
    images: ImageSamples | None = None,
) -> DataSets:
    """The three disjoint sets of one sweep; same config and seed give the same tokens anywhere.

    With ``images``, each set's rows are image+text at evenly spread places (``fraction`` of them)
    and text windows elsewhere: records and windows alike are taken for calibration and scoring
    from the front, for evaluation from the back (or from ``eval_source``), so no set shares one.
    """
    shape = (cfg.batch_size, cfg.seq_len)
    counts = {"calib": cfg.calib_batches, "score": cfg.score_batches, "eval": cfg.eval_batches}
    if cfg.source == "synthetic":
        rng = np.random.default_rng(seed)
        sets = {k: rng.integers(0, vocab_size, size=(n, *shape)) for k, n in counts.items()}
        return DataSets(*(TokenSet(k, v, "synthetic") for k, v in sets.items()))
    fraction = {k: images.fraction_of(k) if images else 0.0 for k in counts}
    placed = {k: image_places(n * cfg.batch_size, fraction[k]) for k, n in counts.items()}
    need = {k: int((~v).sum()) for k, v in placed.items()}
    text = _text_rows(cfg, tokenize, need) if any(need.values()) else {}
    if images is None:
        return DataSets(
            *(TokenSet(k, text[k].reshape(n, *shape), cfg.source) for k, n in counts.items())
        )
    got = {k: int(v.sum()) for k, v in placed.items()}
    samples = list(images.samples)
    front = got["calib"] + got["score"]
    if len(samples) < front + got["eval"]:
        knob = (
            f"data.image_fraction={fraction['calib']:g}"
            if fraction["eval"] == fraction["calib"]
            else f"data.image_fraction={fraction['calib']:g}, eval_image_fraction="
            f"{fraction['eval']:g}"
        )
        raise DataError(
            f"{knob}: {images.source!r} holds {len(samples)} image+text "
            f"records, the sets need {front + got['eval']} (calibration {got['calib']}, scoring "
            f"{got['score']}, evaluation {got['eval']}); use more records, fewer batches or a "
            "lower image_fraction"
        )
    picked = {
        "calib": samples[: got["calib"]],
        "score": samples[got["calib"] : front],
        "eval": samples[len(samples) - got["eval"] :],
    }
    empty = np.zeros((0, cfg.seq_len), dtype=np.int64)
    return DataSets(
        *(
            _mixed(k, counts[k], cfg, text.get(k, empty), picked[k], placed[k], images)
            for k in counts
        )
    )


def image_places(rows: int, fraction: float) -> np.ndarray:
    """Which of ``rows`` rows are image+text: ``round(fraction * rows)`` of them, evenly spread."""
    k = int(round(fraction * rows))
    out = np.zeros(rows, dtype=bool)
    if k:
        out[(np.arange(k) * rows) // k] = True
    return out


def _text_rows(cfg: DataConfig, tokenize: Tokenize | None, need: dict[str, int]) -> dict:
    """``need[k]`` text windows per set: calibration, then scoring from the front; evaluation
    from the back, or from ``eval_source``."""
    if tokenize is None:
        raise DataError(f"data.source={cfg.source!r}: text needs a tokenizer for this model")
    windows = _windows(np.asarray(tokenize(_load_text(cfg.source, cfg.text_field))), cfg.seq_len)
    front = need["calib"] + need["score"]
    if cfg.eval_source:
        eval_windows = _windows(
            np.asarray(tokenize(_load_text(cfg.eval_source, cfg.text_field))), cfg.seq_len
        )
        _require(cfg, "eval_source", len(eval_windows), {"evaluation": need["eval"]})
        _require(
            cfg, "source", len(windows), {"calibration": need["calib"], "scoring": need["score"]}
        )
        eval_rows = eval_windows[: need["eval"]]
    else:
        wanted = {
            "calibration": need["calib"],
            "scoring": need["score"],
            "evaluation": need["eval"],
        }
        _require(cfg, "source", len(windows), wanted)
        eval_rows = windows[len(windows) - need["eval"] :]
    return {
        "calib": windows[: need["calib"]],
        "score": windows[need["calib"] : front],
        "eval": eval_rows,
    }


def _mixed(
    name: str,
    batches: int,
    cfg: DataConfig,
    text: np.ndarray,
    samples: Sequence[Sample],
    placed: np.ndarray,
    images: ImageSamples,
) -> TokenSet:
    """Text windows and right-padded image+text rows in one (batches, batch_size, seq_len) set."""
    rows, seq = len(placed), cfg.seq_len
    tokens = np.full((rows, seq), images.pad_id, dtype=np.int64)
    attention = np.zeros((rows, seq), dtype=bool)
    targets = np.zeros((rows, seq), dtype=bool)
    mm_types = np.zeros((rows, seq), dtype=np.int8)
    tokens[~placed], attention[~placed] = text, True
    targets[~placed, 1:] = True
    for row, s in zip(np.flatnonzero(placed), samples, strict=True):
        n = len(s.ids)
        tokens[row, :n], attention[row, :n] = s.ids, True
        targets[row, s.answer_start : n] = True
        mm_types[row, :n] = s.mm_types
    per_row = iter(samples)
    by_batch = placed.reshape(batches, cfg.batch_size)
    chosen = [[next(per_row) for _ in range(int(b.sum()))] for b in by_batch]
    dim = samples[0].pixels.shape[1] if samples else 0
    pixels = tuple(
        np.concatenate([s.pixels for s in c]) if c else np.zeros((0, dim), np.float32)
        for c in chosen
    )
    grids = tuple(
        np.stack([s.grid for s in c]) if c else np.zeros((0, 3), np.int64) for c in chosen
    )
    shape = (batches, cfg.batch_size, seq)
    source = images.source if placed.all() else f"{cfg.source} + {images.source}"
    return TokenSet(
        name,
        tokens.reshape(shape),
        source,
        attention.reshape(shape),
        targets.reshape(shape),
        by_batch,
        pixels,
        grids,
        tuple(s.image_sha for s in samples),
        images.settings,
        mm_types.reshape(shape),
    )


def _require(cfg: DataConfig, field: str, have: int, wanted: dict[str, int]) -> None:
    """Enough windows of ``data.<field>``'s text for the text rows of the sets it feeds."""
    want = sum(wanted.values())
    if have < want:
        rows = " + ".join(f"{k} {n}" for k, n in wanted.items())
        raise DataError(
            f"data.{field}={getattr(cfg, field)!r}: {have} windows of {cfg.seq_len} tokens, need "
            f"{want} ({rows}); use more text, or fewer batches (data.calib_batches, "
            "score_batches, eval_batches), a smaller data.batch_size or a shorter data.seq_len"
        )
