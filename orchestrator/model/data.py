"""Calibration, scoring, selection and report token sets, each with fixed content and a hash.

Sources: deterministic synthetic tokens (``synthetic``), a local ``.txt``/``.jsonl``/``.parquet``
file, or a Hugging Face dataset (``hf:<name>[:<config>[:<split>]]``) when the network allows.

Text is read as **documents** (:func:`split_documents`): the sections of WikiText-style text (a
line ``= Title =`` or ``= = Section = =`` starts one), else each record of a JSONL/Parquet/dataset
source, else the blank-line paragraphs of a plain file. The sets take disjoint windows of
``seq_len`` tokens, drawn with the sweep's seed across the whole source:

- the **report** set (``data.report_batches``) takes one window, at a random place, from each of
  as many documents as it has rows, drawn at random from those at least a window long; those
  documents give nothing to any other set, so the numbers schemes.yaml publishes and judges come
  from text that informed no choice (a source of too few documents fills the rest of the report
  with windows of the others);
- calibration, scoring and the **selection** set (``data.eval_batches``: the front and the names
  are chosen on it) take windows drawn at random from the other documents, read one after another
  as one text (a window may cross from one document into the next). With ``eval_source``,
  selection and report come from that file.

Each row of the selection and report sets carries its document's index (``docs``), so intervals on
the report set resample documents. Each set's hash (sha256 of its tokens) goes into the score-cache
key and into the tracking tags. Arrays are numpy; torch stays in the GPU stages.

Image+text records (encoded by ``images.py``) are documents of their own and mix in as rows,
right-padded to ``seq_len``: calibration and scoring from the front of the records, report from
the back, selection just before it; such a set also carries masks, pixels and the image files'
hashes, all hashed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
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
    docs: np.ndarray | None = None  # (batches, batch_size): each row's document (selection, report)

    @property
    def hash(self) -> str:
        h = hashlib.sha256(str(self.tokens.shape).encode())
        h.update(np.ascontiguousarray(self.tokens, dtype=np.int64).tobytes())
        if self.docs is not None:
            h.update(b"docs" + np.ascontiguousarray(self.docs, dtype=np.int64).tobytes())
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
    """``eval`` is the selection set; ``report`` (None when ``data.report_batches`` is 0) the set
    the published numbers come from."""

    calib: TokenSet
    score: TokenSet
    eval: TokenSet
    report: TokenSet | None = None

    def all(self) -> tuple[TokenSet, ...]:
        return tuple(s for s in (self.calib, self.score, self.eval, self.report) if s is not None)

    def hashes(self) -> dict[str, str]:
        return {s.name: s.hash for s in self.all()}


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
    joined by newlines (:func:`read_records`)."""
    return "\n".join(read_records(path, text_field))


def read_records(path: Path, text_field: str = "text") -> list[str]:
    """The records of a file: a ``.txt`` file is one; each JSONL line's or Parquet row's
    ``text_field`` is one. A record that is not an object or lacks the field is a
    :class:`DataError` naming its line (the caller adds the source)."""
    if path.suffix == ".txt":
        return [path.read_text(encoding="utf-8")]
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
        return texts
    import pyarrow.parquet as pq

    columns = pq.read_schema(path).names
    if text_field not in columns:
        raise DataError(
            f"no {text_field!r} column (data.text_field; its columns: {', '.join(columns)}); "
            "set data.text_field to the column that holds the text"
        )
    table = pq.read_table(path, columns=[text_field])
    return [str(x) for x in table.column(text_field).to_pylist()]


def _read_hf(spec: str, text_field: str) -> list[str]:
    import datasets  # optional: only when the network allows

    parts = spec.removeprefix("hf:").split(":")
    name, config, split = (
        parts[0],
        (parts[1] if len(parts) > 1 else None),
        parts[2] if len(parts) > 2 else "test",
    )
    ds = datasets.load_dataset(name, config, split=split)
    return [str(x) for x in ds[text_field]]


def _load_records(source: str, text_field: str) -> list[str]:
    if source.startswith("hf:"):
        return _read_hf(source, text_field)
    return read_records(Path(source).expanduser(), text_field)


def _heading_level(line: str) -> int:
    """1 for a WikiText title line ``= Title =``, 2 for ``= = Section = =``, ...; 0 otherwise."""
    s, level = line.strip(), 0
    if not (s.startswith("= ") and s.endswith(" =")):
        return 0
    while s.startswith("= ") and s.endswith(" ="):
        s, level = s[2:-2].strip(), level + 1
    return level if s and "=" not in (s[0], s[-1]) else 0


def split_documents(records: Sequence[str]) -> list[str]:
    """The documents of a text source: WikiText-style sections when the text has headings (a line
    of level 1 or 2 starts one; deeper subsections stay in their section, the text before the
    first heading is one); else the records, when there are several; else the blank-line
    paragraphs of the one text. Empty documents are dropped."""
    lines = "\n".join(records).split("\n")
    if any(0 < _heading_level(line) <= 2 for line in lines):
        docs: list[list[str]] = [[]]
        for line in lines:
            if 0 < _heading_level(line) <= 2:
                docs.append([])
            docs[-1].append(line)
        texts = ["\n".join(d) for d in docs]
    elif len(records) > 1:
        texts = list(records)
    else:
        texts = "\n".join(records).split("\n\n")
    return [t for t in texts if t.strip()]


@dataclass(frozen=True)
class ImageSamples:
    """Encoded image+text records and how they mix into the sets: ``fraction`` of the rows of
    calibration and scoring, ``eval_fraction`` (default: the same) of the selection and report
    sets'."""

    samples: Sequence[Sample]
    fraction: float
    source: str
    pad_id: int
    settings: str
    eval_fraction: float | None = None

    def fraction_of(self, name: str) -> float:
        if name in ("eval", "report") and self.eval_fraction is not None:
            return self.eval_fraction
        return self.fraction


def build_datasets(
    cfg: DataConfig,
    vocab_size: int,
    tokenize: Tokenize | None,
    seed: int,
    images: ImageSamples | None = None,
) -> DataSets:
    """The disjoint sets of one sweep; same config and seed give the same tokens anywhere.

    With ``images``, each set's rows are image+text at evenly spread places (``fraction`` of them)
    and text windows elsewhere: records for calibration and scoring from the front, for the
    report from the back, for selection just before it, so no set shares one.
    """
    shape = (cfg.batch_size, cfg.seq_len)
    counts = {
        "calib": cfg.calib_batches,
        "score": cfg.score_batches,
        "eval": cfg.eval_batches,
        "report": cfg.report_batches,
    }
    counts = {k: n for k, n in counts.items() if n}
    if cfg.source == "synthetic":
        rng = np.random.default_rng(seed)
        made = {k: rng.integers(0, vocab_size, size=(n, *shape)) for k, n in counts.items()}
        if cfg.draw:  # another draw of the sets that choose; the report set stays
            other = np.random.default_rng([seed, cfg.draw])
            for k in ("calib", "score", "eval"):
                made[k] = other.integers(0, vocab_size, size=(counts[k], *shape))
        docs = {k: np.arange(n * cfg.batch_size).reshape(n, *shape[:1]) for k, n in counts.items()}
        return _data_sets(
            {k: TokenSet(k, v, "synthetic", docs=_judged(k, docs[k])) for k, v in made.items()}
        )
    fraction = {k: images.fraction_of(k) if images else 0.0 for k in counts}
    placed = {k: image_places(n * cfg.batch_size, fraction[k]) for k, n in counts.items()}
    need = {k: int((~v).sum()) for k, v in placed.items()}
    text, text_docs = _text_rows(cfg, tokenize, need, seed) if any(need.values()) else ({}, {})
    if images is None:
        return _data_sets(
            {
                k: TokenSet(
                    k,
                    text[k].reshape(n, *shape),
                    cfg.source,
                    docs=_judged(k, text_docs[k].reshape(n, cfg.batch_size)),
                )
                for k, n in counts.items()
            }
        )
    got = {k: int(v.sum()) for k, v in placed.items()}
    samples = list(images.samples)
    front = got["calib"] + got["score"]
    back = got.get("eval", 0) + got.get("report", 0)
    if len(samples) < front + back:
        knob = (
            f"data.image_fraction={fraction['calib']:g}"
            if fraction.get("eval", fraction["calib"]) == fraction["calib"]
            else f"data.image_fraction={fraction['calib']:g}, eval_image_fraction="
            f"{fraction['eval']:g}"
        )
        raise DataError(
            f"{knob}: {images.source!r} holds {len(samples)} image+text "
            f"records, the sets need {front + back} (calibration {got['calib']}, scoring "
            f"{got['score']}, selection {got.get('eval', 0)}, report {got.get('report', 0)}); "
            "use more records, fewer batches or a lower image_fraction"
        )
    end = len(samples)
    ranges = {
        "calib": (0, got["calib"]),
        "score": (got["calib"], front),
        "eval": (end - back, end - got.get("report", 0)),
        "report": (end - got.get("report", 0), end),
    }
    empty = np.zeros((0, cfg.seq_len), dtype=np.int64)
    sets: dict[str, TokenSet] = {}
    for k in counts:
        lo, hi = ranges[k]
        # an image record is a document of its own, numbered after the text's documents
        record_docs = np.arange(lo, hi) + _IMAGE_DOCS
        rows_docs = np.zeros(len(placed[k]), dtype=np.int64)
        rows_docs[placed[k]] = record_docs
        rows_docs[~placed[k]] = text_docs.get(k, np.zeros(0, np.int64))
        mixed = _mixed(k, counts[k], cfg, text.get(k, empty), samples[lo:hi], placed[k], images)
        sets[k] = replace(mixed, docs=_judged(k, rows_docs.reshape(counts[k], cfg.batch_size)))
    return _data_sets(sets)


_IMAGE_DOCS = 1 << 40  # image records' document numbers start here, after any text's


def _judged(name: str, docs: np.ndarray) -> np.ndarray | None:
    """Rows' documents are kept for the sets measured per plan (selection and report)."""
    return docs if name in ("eval", "report") else None


def _data_sets(sets: dict[str, TokenSet]) -> DataSets:
    return DataSets(sets["calib"], sets["score"], sets["eval"], sets.get("report"))


def image_places(rows: int, fraction: float) -> np.ndarray:
    """Which of ``rows`` rows are image+text: ``round(fraction * rows)`` of them, evenly spread."""
    k = int(round(fraction * rows))
    out = np.zeros(rows, dtype=bool)
    if k:
        out[(np.arange(k) * rows) // k] = True
    return out


def _text_rows(
    cfg: DataConfig, tokenize: Tokenize | None, need: dict[str, int], seed: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``need[k]`` text windows per set, and each window's document: the report set one window
    from each of as many documents first; calibration, scoring and selection then take windows
    drawn across the rest of the text (module docstring); with ``eval_source``, selection and
    report come from that file."""
    if tokenize is None:
        raise DataError(f"data.source={cfg.source!r}: text needs a tokenizer for this model")
    rng = np.random.default_rng([seed, 26])  # which documents and windows: the sweep's seed
    source = _documents(cfg.source, cfg.text_field, tokenize)
    report = need.get("report", 0)
    choose = {k: need.get(k, 0) for k in ("calib", "score", "eval")}
    if cfg.eval_source:
        held = _documents(cfg.eval_source, cfg.text_field, tokenize, offset=1 << 32)
        picked = _report_and_rest(held, report, {"eval": choose["eval"]}, cfg, "eval_source", rng)
        front = {"calib": choose["calib"], "score": choose["score"]}
        picked |= _report_and_rest(source, 0, front, cfg, "source", rng)
    else:
        picked = _report_and_rest(source, report, choose, cfg, "source", rng)
    rows = {k: v[0] for k, v in picked.items()}
    docs = {k: v[1] for k, v in picked.items()}
    return rows, docs


# a document: (its number, its token ids), in the source's order
_Doc = tuple[int, np.ndarray]
_Rows = tuple[np.ndarray, np.ndarray]  # (windows (n, seq_len), each window's document)
_NAMES = {"calib": "calibration", "score": "scoring", "eval": "selection", "report": "report"}


def _documents(source: str, field: str, tokenize: Tokenize, offset: int = 0) -> list[_Doc]:
    texts = split_documents(_load_records(source, field))
    docs = [(offset + i, np.asarray(tokenize(t), dtype=np.int64)) for i, t in enumerate(texts)]
    return [d for d in docs if len(d[1])]


def _report_and_rest(
    docs: Sequence[_Doc],
    report: int,
    rest: dict[str, int],
    cfg: DataConfig,
    field: str,
    rng: np.random.Generator,
) -> dict[str, _Rows]:
    """The report's ``report`` windows, one from each of as many documents (drawn at random, a
    window at a random place in each) as leave enough text for ``rest``; then the other
    documents, in the source's order, as one stream cut into windows, drawn at random for the
    report's shortfall (a source of too few documents) and for the sets of ``rest`` in order."""
    seq = cfg.seq_len
    leave = sum(rest.values())
    left = sum(len(ids) for _, ids in docs)
    taken: dict[int, np.ndarray] = {}
    for i in rng.permutation(len(docs)):
        if len(taken) == report:
            break
        number, ids = docs[i]
        if len(ids) >= seq and (left - len(ids)) // seq >= leave + report - len(taken) - 1:
            at = int(rng.integers(0, len(ids) - seq + 1))
            taken[number] = ids[at : at + seq]
            left -= len(ids)
    stream = _stream([d for d in docs if d[0] not in taken], seq)
    short = report - len(taken)
    wanted = {_NAMES[k]: n for k, n in rest.items()} | ({"report": short} if short else {})
    _require(cfg, field, len(stream[0]), wanted, len(taken))
    order = rng.permutation(len(stream[0]))
    if cfg.draw:  # another draw of the windows that choose; the report's stay
        order = np.concatenate([order[:short], _drawn(rng, cfg.draw).permutation(order[short:])])
    out: dict[str, _Rows] = {}
    extra = order[:short]
    numbers = np.array(list(taken), dtype=np.int64)
    if report:
        windows = [*taken.values(), *stream[0][extra]]
        out["report"] = (
            np.stack(windows) if windows else np.zeros((0, seq), np.int64),
            np.concatenate([numbers, stream[1][extra]]),
        )
    at = short
    for k, n in rest.items():
        part = order[at : at + n]
        out[k] = (stream[0][part], stream[1][part])
        at += n
    return out


def _drawn(rng: np.random.Generator, draw: int) -> np.random.Generator:
    """The generator of draw ``draw``, itself drawn from the seed's."""
    return np.random.default_rng([draw, int(rng.integers(1 << 31))])


def _stream(docs: Sequence[_Doc], seq_len: int) -> _Rows:
    """The documents one after another, cut into windows; each window's number is the document
    it starts in."""
    if not docs:
        return np.zeros((0, seq_len), np.int64), np.zeros(0, np.int64)
    ids = np.concatenate([d[1] for d in docs])
    starts = np.cumsum([0, *(len(d[1]) for d in docs)])[:-1]
    n = len(ids) // seq_len
    first = np.arange(n) * seq_len
    owner = np.searchsorted(starts, first, side="right") - 1
    numbers = np.array([d[0] for d in docs], dtype=np.int64)
    return ids[: n * seq_len].reshape(n, seq_len), numbers[owner]


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


def _require(
    cfg: DataConfig, field: str, have: int, wanted: dict[str, int], reported: int = 0
) -> None:
    """Enough windows of ``data.<field>``'s text for the text rows of the sets it feeds, once the
    report set took its ``reported`` documents."""
    wanted = {k: n for k, n in wanted.items() if n}
    want = sum(wanted.values())
    if have < want:
        rows = " + ".join(f"{k} {n}" for k, n in wanted.items())
        after = f" besides the report set's {reported} documents" if reported else ""
        raise DataError(
            f"data.{field}={getattr(cfg, field)!r}: {have} windows of {cfg.seq_len} tokens"
            f"{after}, need {want} ({rows}); use more text, or fewer batches (data.calib_batches, "
            "score_batches, eval_batches, report_batches), a smaller data.batch_size or a "
            "shorter data.seq_len"
        )
