"""A tiny random checkpoint of every supported family, saved with ``save_pretrained``.

Each has 4 decoder blocks of width 64 (16 groups, so every catalog band holds a plan), vocabulary
512 (the session's synthetic data) and, for the VL families, a 2-block vision tower whose output
width is the text width. With ``reads=True`` a checkpoint also reads real text and images: the
shipped reference model's tokenizer, chat template and image processor settings go into its folder,
and its vocabulary and special token ids are that tokenizer's. Nothing binary is committed: the
folders are built per test session.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TEXT = dict(
    hidden_size=64,
    num_hidden_layers=4,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=512,
    max_position_embeddings=2048,
    bos_token_id=0,
    eos_token_id=1,
)
VL_IDS = dict(
    image_token_id=2,
    video_token_id=3,
    vision_start_token_id=4,
    vision_end_token_id=5,
    bos_token_id=0,
    eos_token_id=1,
)
MROPE = {"mrope_section": [2, 3, 3]}
# the reference preset's tokenizer: 4096 tokens, <|endoftext|> = 0, then the vision tokens
READS = dict(
    vocab_size=4096,
    bos_token_id=0,
    eos_token_id=0,
    vision_start_token_id=1,
    vision_end_token_id=2,
    image_token_id=3,
    video_token_id=4,
)
PROCESSOR_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "preprocessor_config.json",
)


def tiny_config(model_type: str, reads: bool = False) -> Any:
    """The family's tiny config; ``reads``: with the reference tokenizer's vocabulary and ids."""
    if reads:
        text = {k: READS[k] for k in ("vocab_size", "bos_token_id", "eos_token_id")}
        vl = {k: v for k, v in READS.items() if k != "vocab_size"}
        return _tiny_config(model_type, {**TEXT, **text}, {**VL_IDS, **vl})
    return _tiny_config(model_type, TEXT, VL_IDS)


def _tiny_config(model_type: str, text: dict, ids: dict) -> Any:
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2Config,
        Qwen2VLConfig,
        Qwen3Config,
        Qwen3VLConfig,
    )

    if model_type == "qwen2_5_vl":
        return Qwen2_5_VLConfig(
            text_config={**text, "rope_scaling": {"type": "mrope", **MROPE}},
            vision_config=dict(
                depth=2,
                hidden_size=32,
                intermediate_size=64,
                num_heads=2,
                out_hidden_size=64,
                fullatt_block_indexes=[1],
            ),
            tie_word_embeddings=True,
            **ids,
        )

    if model_type == "qwen2_vl":
        return Qwen2VLConfig(
            text_config={**text, "rope_scaling": {"type": "mrope", **MROPE}},
            vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2),
            tie_word_embeddings=True,
            **ids,
        )
    if model_type == "qwen3_vl":
        return Qwen3VLConfig(
            text_config={
                **text,
                "head_dim": 16,
                "rope_scaling": {"rope_type": "default", "mrope_interleaved": True, **MROPE},
            },
            vision_config=dict(
                depth=2,
                hidden_size=32,
                intermediate_size=64,
                num_heads=2,
                out_hidden_size=64,
                num_position_embeddings=16,
                deepstack_visual_indexes=[0],
            ),
            tie_word_embeddings=False,
            **ids,
        )
    if model_type == "qwen2":
        return Qwen2Config(**text, tie_word_embeddings=True)
    if model_type == "qwen3":
        return Qwen3Config(**text, head_dim=16, tie_word_embeddings=False)
    raise KeyError(model_type)


def save_tiny(model_type: str, folder: Path, seed: int = 0, reads: bool = False) -> Path:
    """A seeded random model of the family, saved as a checkpoint folder; ``reads``: with the
    reference model's tokenizer and image processor files, so it reads text and images."""
    import shutil

    import torch

    from orchestrator.model.families import loader_class
    from orchestrator.model.presets import SHIPPED_PRESETS

    torch.manual_seed(seed)
    loader_class(model_type)(tiny_config(model_type, reads)).save_pretrained(folder)
    if reads:
        reference = SHIPPED_PRESETS["wikitext-qwen2.5-vl"]
        for name in PROCESSOR_FILES:
            shutil.copy(reference / name, folder / name)
    return folder
