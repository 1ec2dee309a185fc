"""A token set's batches as model inputs on a device: the one place scoring and trials build them.

A text-only set gives ``input_ids`` alone, as it always did. A set with image+text rows adds the
attention mask (padding is masked out, and Qwen2.5-VL's rotary positions skip it), the image rows'
``pixel_values`` and ``image_grid_thw`` (the vision tower runs in BF16 inside the same forward
pass), and ``targets``: the tokens that count in a loss or metric, so padding and prompt tokens
never do. Right padding keeps each row's real tokens at the same positions as when it runs alone,
so a padded batch gives each row the outputs it would get by itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from orchestrator.data import TokenSet


@dataclass(frozen=True)
class Batch:
    inputs: dict[str, torch.Tensor]  # keyword arguments of the model's forward
    targets: torch.Tensor | None  # (rows, seq) bool; None: every token but each row's first
    positions: tuple[slice, ...]  # per row: the positions whose logits predict a target token
    image_rows: tuple[bool, ...]  # per row: an image+text row (else a text row)

    @property
    def input_ids(self) -> torch.Tensor:
        return self.inputs["input_ids"]

    def counts(self) -> tuple[int, int]:
        """Target tokens of the text rows and of the image rows (host-side: no device sync)."""
        per = [p.stop - p.start for p in self.positions]
        image = sum(n for n, img in zip(per, self.image_rows, strict=True) if img)
        return sum(per) - image, image


def batches(tokens: TokenSet, device: str, per_forward: int = 1) -> list[Batch]:
    """The set's batches, ``per_forward`` of them stacked along the batch axis per forward pass."""
    arr = tokens.tokens
    seq = arr.shape[-1]
    out = []
    for i in range(0, len(arr), per_forward):
        part = slice(i, i + per_forward)
        ids = torch.as_tensor(arr[part].reshape(-1, seq), dtype=torch.long, device=device)
        if tokens.image_rows is None:
            rows = ids.shape[0]
            out.append(
                Batch({"input_ids": ids}, None, (slice(0, seq - 1),) * rows, (False,) * rows)
            )
            continue
        assert tokens.attention is not None and tokens.targets is not None
        mask = torch.as_tensor(tokens.attention[part].reshape(-1, seq), device=device)
        inputs = {"input_ids": ids, "attention_mask": mask.long()}
        grids = np.concatenate(tokens.grids[part])
        if len(grids):
            pixels = np.concatenate(tokens.pixels[part])
            inputs["pixel_values"] = torch.as_tensor(pixels, device=device)
            inputs["image_grid_thw"] = torch.as_tensor(grids, dtype=torch.long, device=device)
        targets = tokens.targets[part].reshape(-1, seq)
        positions = tuple(_span(row[1:]) for row in targets)
        image_rows = tuple(bool(x) for x in tokens.image_rows[part].reshape(-1))
        out.append(Batch(inputs, torch.as_tensor(targets, device=device), positions, image_rows))
    return out


def _span(next_is_target: np.ndarray) -> slice:
    """The positions whose next token is a target: one run per row (a window, or an answer)."""
    idx = np.flatnonzero(next_is_target)
    if len(idx) == 0:
        return slice(0, 0)
    if idx[-1] - idx[0] + 1 != len(idx):
        raise ValueError("a row's target tokens must be contiguous")
    return slice(int(idx[0]), int(idx[-1]) + 1)


def target_logits(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """(targets, vocab): the logits of a batch with image rows that predict a target token."""
    assert batch.targets is not None
    return logits[:, :-1][batch.targets[:, 1:]]


def target_ids(batch: Batch) -> torch.Tensor:
    """The target tokens, in the order :func:`target_logits` gives their logits."""
    assert batch.targets is not None
    return batch.input_ids[:, 1:][batch.targets[:, 1:]]
