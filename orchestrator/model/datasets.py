"""A sweep's token sets from its config: which tokenizer reads the text, and the image+text
records encoded by the model's own processor. The driver, ``export`` and the benchmarks build
their data here, so all of them tokenize the same way."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from orchestrator.core.config import (
    ConfigError,
    DataError,
    SweepConfig,
)
from orchestrator.model.data import DataSets, Tokenize
from orchestrator.model.images import image_source


def encoded_images(cfg: SweepConfig) -> Any:
    """The encoded image+text records (``data.ImageSamples``) through the model's processor."""
    from orchestrator.model.images import image_samples
    from orchestrator.model.loading import resolve_config, resolve_source
    from orchestrator.model.presets import PRESETS

    m = cfg.model
    if m.source in PRESETS:
        raise ConfigError(
            f"model.source={m.source!r}: a random preset has no tokenizer or image processor for "
            "image+text data; use wikitext-qwen2.5-vl or a model folder"
        )
    hf = resolve_config(m.source, m.revision, m.trust_remote_code)
    return image_samples(cfg.data, resolve_source(m.source), m.revision, m.trust_remote_code, hf)


def build_data(cfg: SweepConfig, quiet: bool = False) -> DataSets:
    """The three sets of a sweep, as the input checks build them before Ray starts: a source that
    cannot fill them (too little text, no tokenizer, a bad record) is a ``DataError`` here.
    ``quiet``: transformers' warnings off while it reads the tokenizer and the processor
    (:func:`transformers_quiet`; the driver's checks)."""
    from orchestrator.model.data import build_datasets, byte_tokenizer, hf_tokenizer
    from orchestrator.model.loading import model_facts, resolve_source
    from orchestrator.model.presets import PRESETS

    facts = model_facts(cfg.model.source, cfg.model.revision, cfg.model.trust_remote_code)
    vocab = facts.vocab_size
    label = f"model.source={cfg.model.source!r}"
    hushed = transformers_quiet if quiet else nullcontext
    tokenize: Tokenize | None
    if cfg.data.source == "synthetic":
        tokenize = None
    elif cfg.model.source in PRESETS:  # random weights, no tokenizer of their own
        tokenize = byte_tokenizer(vocab)
    else:  # a shipped preset reads text with its own tokenizer, from its folder
        with hushed():
            tokenizer = hf_tokenizer(
                resolve_source(cfg.model.source),
                cfg.model.revision,
                cfg.model.trust_remote_code,
                label,
            )
        tokenize = _within_vocab(tokenizer, vocab, label)
    images = None
    if image_source(cfg.data) is not None:
        with hushed():
            images = encoded_images(cfg)
    return build_datasets(cfg.data, vocab, tokenize, cfg.seed, images)


@contextmanager
def transformers_quiet() -> Iterator[None]:
    """transformers' warnings off (errors still shown) while the driver's checks read a model's
    tokenizer and processor: the driver's console shows only the sweep's own lines, and logs/ is
    not written before the checks pass. What it warns about the model's config (the shipped preset's
    axial vision rope, for one) the workers log again into logs/ when they load the model."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _within_vocab(tokenize: Tokenize, vocab: int, label: str) -> Tokenize:
    """``tokenize``, refusing ids the model has no embedding for (another model's tokenizer): in
    a worker they would fail the first forward pass, long after the checks."""

    def checked(text: str) -> list[int]:
        ids = tokenize(text)
        top = max(ids, default=-1)
        if top >= vocab:
            raise DataError(
                f"{label}: its tokenizer gives token id {top}, beyond the model's vocab_size "
                f"{vocab}; use the tokenizer files that belong to the model"
            )
        return ids

    return checked
