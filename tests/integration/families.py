"""A tiny random checkpoint of every supported family, saved with ``save_pretrained``.

Each has 4 decoder blocks of width 64 (16 groups, so every catalog band holds a plan), vocabulary
512 (the session's synthetic data) and, for the VL families, a 2-block vision tower whose output
width is the text width. Nothing binary is committed: the folders are built per test session.
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


def tiny_config(model_type: str) -> Any:
    from transformers import Qwen2Config, Qwen2VLConfig, Qwen3Config, Qwen3VLConfig

    if model_type == "qwen2_vl":
        return Qwen2VLConfig(
            text_config={**TEXT, "rope_scaling": {"type": "mrope", **MROPE}},
            vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2),
            tie_word_embeddings=True,
            **VL_IDS,
        )
    if model_type == "qwen3_vl":
        return Qwen3VLConfig(
            text_config={
                **TEXT,
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
            **VL_IDS,
        )
    if model_type == "qwen2":
        return Qwen2Config(**TEXT, tie_word_embeddings=True)
    if model_type == "qwen3":
        return Qwen3Config(**TEXT, head_dim=16, tie_word_embeddings=False)
    raise KeyError(model_type)


def save_tiny(model_type: str, folder: Path, seed: int = 0) -> Path:
    """A seeded random model of the family, saved as a checkpoint folder."""
    import torch

    from orchestrator.model.families import loader_class

    torch.manual_seed(seed)
    loader_class(model_type)(tiny_config(model_type)).save_pretrained(folder)
    return folder
