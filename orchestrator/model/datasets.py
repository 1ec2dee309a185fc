"""A sweep's token sets from its config: which tokenizer reads the text, and the image+text
records encoded by the model's own processor. The driver, ``export`` and the benchmarks build
their data here, so all of them tokenize the same way."""

from __future__ import annotations

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


def build_data(cfg: SweepConfig) -> DataSets:
    """The three sets of a sweep, as the input checks build them before Ray starts: a source that
    cannot fill them (too little text, no tokenizer, a bad record) is a ``DataError`` here."""
    from orchestrator.model.data import build_datasets, byte_tokenizer, hf_tokenizer
    from orchestrator.model.loading import model_facts, resolve_source
    from orchestrator.model.presets import PRESETS

    facts = model_facts(cfg.model.source, cfg.model.revision, cfg.model.trust_remote_code)
    vocab = facts.vocab_size
    label = f"model.source={cfg.model.source!r}"
    tokenize: Tokenize | None
    if cfg.data.source == "synthetic":
        tokenize = None
    elif cfg.model.source in PRESETS:  # random weights, no tokenizer of their own
        tokenize = byte_tokenizer(vocab)
    else:  # a shipped preset reads text with its own tokenizer, from its folder
        tokenize = _within_vocab(
            hf_tokenizer(
                resolve_source(cfg.model.source),
                cfg.model.revision,
                cfg.model.trust_remote_code,
                label,
            ),
            vocab,
            label,
        )
    images = encoded_images(cfg) if image_source(cfg.data) is not None else None
    return build_datasets(cfg.data, vocab, tokenize, cfg.seed, images)


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
