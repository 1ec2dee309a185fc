"""The presets: random-weight Qwen2.5-VL models built from a config (tiny for tests, 3B to 72B
for benchmarks at real sizes), and the shipped ``wikitext-qwen2.5-vl`` reference model."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _tiny_config() -> Any:
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=64,
            num_hidden_layers=4,
            intermediate_size=128,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=512,
            bos_token_id=0,
            eos_token_id=1,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
            rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
        ),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            fullatt_block_indexes=[1],
        ),
        tie_word_embeddings=True,
        image_token_id=2,
        video_token_id=3,
        vision_start_token_id=4,
        vision_end_token_id=5,
    )


# The published Qwen2.5-VL vision tower (3B, 7B, 32B and 72B share it); its output width is the
# language model's.
_VISION_3B = dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    fullatt_block_indexes=[7, 15, 23, 31],
    window_size=112,
)


def _qwen2_5_vl_config(
    hidden: int, layers: int, intermediate: int, heads: int, kv_heads: int, vocab: int, tied: bool
) -> Any:
    """A published Qwen2.5-VL size from its dimensions; random weights when built from it."""
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=hidden,
            num_hidden_layers=layers,
            intermediate_size=intermediate,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            vocab_size=vocab,
            max_position_embeddings=128000,
            rope_theta=1000000.0,
            tie_word_embeddings=tied,
            rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
        ),
        vision_config={**_VISION_3B, "out_hidden_size": hidden},
        tie_word_embeddings=tied,
    )


def _qwen2_5_vl_3b_config() -> Any:
    return _qwen2_5_vl_config(2048, 36, 11008, 16, 2, 151936, tied=True)


def _qwen2_5_vl_7b_config() -> Any:
    return _qwen2_5_vl_config(3584, 28, 18944, 28, 4, 152064, tied=False)


def _qwen2_5_vl_32b_config() -> Any:
    return _qwen2_5_vl_config(5120, 64, 27648, 40, 8, 152064, tied=False)


def _qwen2_5_vl_72b_config() -> Any:
    return _qwen2_5_vl_config(8192, 80, 29568, 64, 8, 152064, tied=False)


# Random-weight presets for plumbing, size and speed work (never to judge a ranking).
PRESETS = {
    "tiny-qwen2.5-vl": _tiny_config,
    "qwen2.5-vl-3b-random": _qwen2_5_vl_3b_config,
    "qwen2.5-vl-7b-random": _qwen2_5_vl_7b_config,
    "qwen2.5-vl-32b-random": _qwen2_5_vl_32b_config,
    "qwen2.5-vl-72b-random": _qwen2_5_vl_72b_config,
}
PRESET_SEED = 1234


# Trained models that ship inside the package (weights, tokenizer, reference.json); a name here
# works wherever a local folder does. scripts/train_reference.py makes them.
# shipped model folders live beside the package's code, in orchestrator/presets/
SHIPPED = Path(__file__).resolve().parents[1] / "presets"
SHIPPED_PRESETS = {"wikitext-qwen2.5-vl": SHIPPED / "wikitext-qwen2.5-vl"}
