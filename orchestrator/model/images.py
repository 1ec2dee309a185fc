"""Image+text records, and their encoding by the model's own image processor and chat template.

A record is (image, prompt, answer). Sources, detected from what the path points at:

- a ``.jsonl`` file, one object per line, or a ``.parquet`` file, one row per record, holding
  ``data.image_field`` (a path relative to the file, or in Parquet the encoded image's bytes),
  ``data.prompt_field`` and ``data.answer_field``;
- a folder of images with ``captions.tsv`` (``file name<TAB>caption`` per line): each caption is the
  answer to :data:`CAPTION_PROMPT`;
- ``hf:<name>[:<config>[:<split>]]``, a Hugging Face dataset with an image column (network only).

A record is encoded as the model will see it in a chat, by the model's own processor class from
transformers (``Qwen2_5_VLProcessor`` for Qwen2.5-VL, and so on): the user turn (the image, then the
prompt) through the chat template with the assistant's generation prompt, the processor expanding
the image placeholder to one token per merged patch and returning every input the model's forward
reads (``input_ids``, ``pixel_values``, ``image_grid_thw`` and ``mm_token_type_ids``, without which
transformers 5.15 gives image rows 1-D rotary positions instead of M-RoPE's 3-D ones); then the
answer's tokens. Only the answer tokens are ever scored. Images of other sizes give other grids, so
other numbers of vision tokens.

The processor is built from the model folder's parts, not by ``AutoProcessor``: the Qwen-VL
processors also take a video processor, which needs torchvision, and torchvision has no CPU build
for the pinned torch (PyPI's wheel links CUDA). Sweeps carry images only, so :func:`image_only`
gives the family's processor class without its video part; everything an image row needs is still
the family processor's own code. Its image processor is the PIL backend read from
``preprocessor_config.json`` (the same pixels, so the same content hash, on every host, with or
without torchvision); the vision tower's own patch, merge and temporal sizes come from the model's
config and override the file's, so the grid always matches the tower.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.core.config import DataConfig, DataError
from orchestrator.model.data import load_tokenizer

CAPTIONS_FILE = "captions.tsv"
CAPTION_PROMPT = "Describe this image."
RECORD_SUFFIXES = (".jsonl", ".parquet")


@dataclass(frozen=True)
class ImageRecord:
    where: str  # "<source> record <n>", for error messages
    image: bytes  # the encoded file (JPEG, PNG, ...): its bytes go into the content hash
    prompt: str
    answer: str


@dataclass(frozen=True)
class Encoded:
    """One record as token ids, with its image's patches; ``ids[answer_start:]`` is the answer."""

    ids: np.ndarray  # (length,) int64
    answer_start: int
    pixels: np.ndarray  # (patches, patch_dim) float32
    grid: np.ndarray  # (3,) int64: temporal, height, width patches
    image_sha: str  # of the image file's bytes
    mm_types: np.ndarray  # (length,) int64: the processor's mm_token_type_ids (1: image token)


def is_image_source(source: str | None, cfg: DataConfig) -> bool:
    """A folder, or a JSONL/Parquet file whose records hold ``data.image_field``."""
    if source is None or source == "synthetic" or source.startswith("hf:"):
        return False
    path = Path(source).expanduser()
    if path.is_dir():
        return True
    if path.suffix not in RECORD_SUFFIXES or not path.is_file():
        return False
    try:
        return cfg.image_field in _columns(path)
    except (OSError, UnicodeDecodeError, ValueError):
        return False  # the text reader reports what is wrong with the file


def _columns(path: Path) -> list[str]:
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "{}")
        row = json.loads(first)
        return list(row) if isinstance(row, dict) else []
    import pyarrow.parquet as pq

    return list(pq.read_schema(path).names)


def read_records(source: str, field: str, cfg: DataConfig) -> list[ImageRecord]:
    """Every record of ``source``, images read; a bad record raises naming the field and record."""
    if source.startswith("hf:"):
        return records_from_dataset(_load_hf(source, field), source, field, cfg)
    path = Path(source).expanduser()
    if path.is_dir():
        return _folder_records(path, field)
    if path.suffix not in RECORD_SUFFIXES:
        raise DataError(
            f"{field}={source!r}: unknown image+text source; use a .jsonl or .parquet file, "
            f"a folder with {CAPTIONS_FILE}, or hf:<name>"
        )
    if not path.is_file():
        raise DataError(f"{field}={source!r}: file not found")
    try:
        rows = _rows(path)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{field}={source!r}: unreadable ({e.__class__.__name__}: {e})") from None
    _check_columns(rows[0] if rows else {}, source, field, cfg)
    return [_record(row, i + 1, path.parent, source, field, cfg) for i, row in enumerate(rows)]


def _rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".jsonl":
        lines = path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def _check_columns(row: dict[str, Any], source: str, field: str, cfg: DataConfig) -> None:
    for knob in ("image_field", "prompt_field", "answer_field"):
        name = getattr(cfg, knob)
        if name not in row:
            raise DataError(
                f"data.{knob}={name!r}: {field}={source!r} has no such column "
                f"(columns: {', '.join(sorted(row)) or 'none'})"
            )


def _record(
    row: dict[str, Any], n: int, base: Path, source: str, field: str, cfg: DataConfig
) -> ImageRecord:
    where = f"{field}={source!r} record {n}"
    for knob in ("prompt_field", "answer_field"):
        value = row.get(getattr(cfg, knob))
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{where}: no {getattr(cfg, knob)!r} text (data.{knob})")
    image = row.get(cfg.image_field)
    if isinstance(image, dict):  # a Hugging Face Image column: {"bytes": ..., "path": ...}
        image = image.get("bytes") or image.get("path")
    if isinstance(image, str):
        image = _read_image_file(base / image, where)
    if not isinstance(image, bytes | bytearray) or not image:
        raise DataError(f"{where}: no image in {cfg.image_field!r} (a path or the file's bytes)")
    _check_decodes(bytes(image), where)
    return ImageRecord(where, bytes(image), row[cfg.prompt_field], row[cfg.answer_field])


def _read_image_file(path: Path, where: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{where}: image {str(path)!r} not found") from None
    except OSError as e:
        raise DataError(
            f"{where}: image {str(path)!r} unreadable ({e.__class__.__name__})"
        ) from None


def _check_decodes(image: bytes, where: str) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(image)) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(
            f"{where}: image is not a readable picture ({e.__class__.__name__})"
        ) from None


def _folder_records(folder: Path, field: str) -> list[ImageRecord]:
    captions = folder / CAPTIONS_FILE
    if not captions.is_file():
        raise DataError(
            f"{field}={str(folder)!r}: folder has no {CAPTIONS_FILE} (file<TAB>caption)"
        )
    out = []
    lines = captions.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        name, sep, caption = line.partition("\t")
        where = f"{field}={str(folder)!r} {CAPTIONS_FILE} line {n}"
        if not sep or not caption.strip():
            raise DataError(f"{where}: expected '<image file>\\t<caption>'")
        image = _read_image_file(folder / name, where)
        _check_decodes(image, where)
        out.append(ImageRecord(where, image, CAPTION_PROMPT, caption.strip()))
    return out


def _load_hf(spec: str, field: str) -> Any:
    import datasets  # optional: only when the network allows

    parts = spec.removeprefix("hf:").split(":")
    config = parts[1] if len(parts) > 1 and parts[1] else None
    split = parts[2] if len(parts) > 2 else "train"
    try:
        return datasets.load_dataset(parts[0], config, split=split)
    except Exception as e:  # noqa: BLE001 - any failure to fetch is bad input here
        raise DataError(f"{field}={spec!r}: cannot load ({e.__class__.__name__})") from None


def records_from_dataset(ds: Any, source: str, field: str, cfg: DataConfig) -> list[ImageRecord]:
    """Records of a ``datasets.Dataset``: its image column read undecoded, as the file's bytes."""
    import datasets

    row = {name: None for name in ds.column_names}
    _check_columns(row, source, field, cfg)
    if isinstance(ds.features[cfg.image_field], datasets.Image):
        ds = ds.cast_column(cfg.image_field, datasets.Image(decode=False))
    return [_record(r, i + 1, Path("."), source, field, cfg) for i, r in enumerate(ds)]


def image_only(processor_class: type) -> type:
    """The family's processor class for images and text alone: its video processor, the only part
    that needs torchvision, left out (transformers lists a processor's parts from its
    ``__init__``)."""

    class ImageOnly(processor_class):
        def __init__(self, image_processor: Any, tokenizer: Any, chat_template: Any = None) -> None:
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template)

    ImageOnly.__name__ = ImageOnly.__qualname__ = processor_class.__name__
    return ImageOnly


class Encoder:
    """The model's processor, as one function from record to ids and the model's other inputs."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.merge = int(processor.image_processor.merge_size)

    def chat_prompt(self, prompt: str) -> str:
        turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        text = self.processor.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
        assert isinstance(text, str)  # one conversation in, one prompt out
        return text

    def prompt_inputs(self, record: ImageRecord) -> dict[str, np.ndarray]:
        """What the processor returns for the record's user turn: ``input_ids``,
        ``mm_token_type_ids``, ``pixel_values``, ``image_grid_thw`` (numpy, batch of one)."""
        from PIL import Image

        text = self.chat_prompt(record.prompt)
        with Image.open(io.BytesIO(record.image)) as im:
            try:
                out = self.processor(
                    text=[text],
                    images=[im.convert("RGB")],
                    return_tensors="np",
                    return_mm_token_type_ids=True,
                )
            except ValueError as e:  # the template's placeholders and the images disagree
                first = str(e).strip().splitlines()[0][:160]
                raise DataError(
                    f"{record.where}: the model's processor refused it ({first})"
                ) from None
        return dict(out)

    def encode(self, record: ImageRecord) -> Encoded:
        out = self.prompt_inputs(record)
        prompt_ids = np.asarray(out["input_ids"][0], dtype=np.int64)
        answer_ids = self.tokenizer(record.answer, add_special_tokens=False)["input_ids"]
        ids = np.concatenate([prompt_ids, np.asarray(answer_ids, dtype=np.int64)])
        mm_types = np.zeros(len(ids), dtype=np.int64)  # the answer is text
        mm_types[: len(prompt_ids)] = out["mm_token_type_ids"][0]
        return Encoded(
            ids,
            len(prompt_ids),
            np.asarray(out["pixel_values"], dtype=np.float32),
            np.asarray(out["image_grid_thw"][0], dtype=np.int64),
            hashlib.sha256(record.image).hexdigest(),
            mm_types,
        )

    @property
    def settings(self) -> str:
        """Fingerprint of what decides the encoding: the processor class, its image processor
        settings and the chat template."""
        doc = {
            "processor": type(self.processor).__name__,
            "image_processor": self.processor.image_processor.to_dict(),
            "chat_template": self.processor.chat_template,
            "tokenizer": type(self.tokenizer).__name__,
            "vocab": len(self.tokenizer),
            "positions": "mm_token_type_ids",  # rows encoded since M-RoPE positions were passed
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[
            :16
        ]

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id or 0)


def load_encoder(
    source: str, revision: str | None, trust_remote_code: bool, config: Any
) -> Encoder:
    """The encoder of a model folder or hub id; ``config`` is its HF config (its ``model_type``
    picks the family's processor and image processor classes, its vision sizes the grid)."""
    import transformers
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    vision = config.vision_config
    sizes: dict[str, Any] = {
        "patch_size": int(vision.patch_size),
        "merge_size": int(vision.spatial_merge_size),
        "temporal_patch_size": int(vision.temporal_patch_size),
    }
    kw: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
    pil = getattr(transformers, IMAGE_PROCESSOR_MAPPING_NAMES[config.model_type]["pil"])
    try:
        image_processor = pil.from_pretrained(source, **kw, **sizes)
    except OSError as e:
        raise DataError(
            f"model.source={source!r}: no image processor settings (preprocessor_config.json) "
            f"for image+text data ({str(e).splitlines()[0][:120]})"
        ) from None
    tokenizer = load_tokenizer(source, revision, trust_remote_code)
    processor_class = image_only(getattr(transformers, PROCESSOR_MAPPING_NAMES[config.model_type]))
    processor = processor_class(image_processor, tokenizer, chat_template=tokenizer.chat_template)
    if not processor.chat_template:
        raise DataError(
            f"model.source={source!r}: its tokenizer has no chat template "
            "(chat_template.jinja or tokenizer_config.json's chat_template) for image+text data"
        )
    return Encoder(processor)


def encode_all(
    records: Sequence[ImageRecord], encoder: Encoder, seq_len: int, field: str = "data.seq_len"
) -> list[Encoded]:
    """Every record encoded; one whose prompt, vision tokens and answer pass ``seq_len`` raises."""
    out = []
    for r in records:
        e = encoder.encode(r)
        if len(e.ids) > seq_len:
            vision = int(e.grid.prod()) // encoder.merge**2
            raise DataError(
                f"{field}={seq_len}: {r.where} needs {len(e.ids)} tokens ({vision} vision tokens); "
                "raise data.seq_len or use smaller images (max_pixels in preprocessor_config.json)"
            )
        out.append(e)
    return out


def image_source(cfg: DataConfig) -> str | None:
    """Where the image+text records come from: data.image_source, or data.source itself."""
    if cfg.image_source is not None:
        return cfg.image_source
    return cfg.source if is_image_source(cfg.source, cfg) else None


def image_fraction(cfg: DataConfig) -> float:
    """The share of image+text rows: data.image_fraction, else all (data.source holds the images,
    there is no text) or half (text and images from two sources)."""
    if cfg.image_fraction is not None:
        return cfg.image_fraction
    return 1.0 if cfg.image_source is None else 0.5


def eval_image_fraction(cfg: DataConfig) -> float:
    """The evaluation set's share of image+text rows: data.eval_image_fraction, else the same as
    calibration and scoring."""
    return image_fraction(cfg) if cfg.eval_image_fraction is None else cfg.eval_image_fraction


def check_mix(cfg: DataConfig) -> None:
    """The mix the knobs ask for has the sources it needs (no files read but the first record)."""
    source = image_source(cfg)
    if source is None:
        for knob in ("image_fraction", "eval_image_fraction"):
            value = getattr(cfg, knob)
            if value:
                raise DataError(
                    f"data.{knob}={value:g}: there are no image+text records to mix in "
                    f"(data.source={cfg.source!r} is text, data.image_source is unset); set "
                    "data.image_source, or leave the knob unset"
                )
        return
    fraction = min(image_fraction(cfg), eval_image_fraction(cfg))
    if cfg.image_source is not None and is_image_source(cfg.source, cfg):
        raise DataError(
            f"data.image_source={cfg.image_source!r}: data.source={cfg.source!r} holds images "
            "too; put text in data.source, or leave data.image_source unset"
        )
    if cfg.image_source is None and fraction < 1:
        knob = "image_fraction" if image_fraction(cfg) < 1 else "eval_image_fraction"
        raise DataError(
            f"data.{knob}={fraction:g}: data.source={cfg.source!r} is image+text and no "
            "text source is given; use 1, or put text in data.source and the records in "
            "data.image_source"
        )
    if cfg.source == "synthetic":
        raise DataError(
            f"data.image_source={source!r}: synthetic tokens have no tokenizer to read prompts "
            "with; use a text data.source and a model with its tokenizer"
        )
    if cfg.eval_source is not None and is_image_source(cfg.eval_source, cfg):
        raise DataError(
            f"data.eval_source={cfg.eval_source!r}: image+text evaluation records come from the "
            "back of the image source; data.eval_source is for text only"
        )


def image_samples(
    cfg: DataConfig, model_source: str, revision: str | None, trust: bool, config: Any
) -> Any:
    """Every image+text record of the sweep, encoded, with the mix (``data.ImageSamples``); None
    when the data is text only. Raises :class:`DataError` on the first bad record."""
    from orchestrator.model.data import ImageSamples

    source = image_source(cfg)
    if source is None:
        return None
    records = read_records(source, "data.image_source" if cfg.image_source else "data.source", cfg)
    if not records:
        raise DataError(f"data.image_source={source!r}: holds no records")
    encoder = load_encoder(model_source, revision, trust, config)
    samples = encode_all(records, encoder, cfg.seq_len)
    return ImageSamples(
        samples,
        image_fraction(cfg),
        source,
        encoder.pad_id,
        encoder.settings,
        eval_image_fraction(cfg),
    )
