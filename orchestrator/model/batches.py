"""A token set's batches as model inputs on a device: the one place scoring and trials build them.

A text-only set gives ``input_ids`` alone, as it always did. A set with image+text rows adds the
attention mask (padding is masked out, and Qwen2.5-VL's rotary positions skip it); in a batch with
images, their ``pixel_values`` and ``image_grid_thw`` (the vision tower runs in BF16 inside the same
forward pass) and the processor's ``mm_token_type_ids``, with which the model computes M-RoPE's 3-D
positions for the image rows (without it, transformers 5.15 falls back to 1-D positions for
Qwen2.5-VL and refuses the batch for Qwen2-VL and Qwen3-VL); and ``targets``: the tokens that count
in a loss or metric, so padding and prompt tokens never do. Right padding keeps each row's real
tokens at the same positions as when it runs alone, so a padded batch gives each row the outputs it
would get by itself. Calibration runs no padding position at all (:func:`calibration_batches`), so
the FP8 ranges come from real tokens only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from orchestrator.model.data import TokenSet


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
            assert tokens.mm_types is not None
            types = tokens.mm_types[part].reshape(-1, seq)
            inputs["mm_token_type_ids"] = torch.as_tensor(types, dtype=torch.long, device=device)
        targets = tokens.targets[part].reshape(-1, seq)
        positions = tuple(_span(row[1:]) for row in targets)
        image_rows = tuple(bool(x) for x in tokens.image_rows[part].reshape(-1))
        out.append(Batch(inputs, torch.as_tensor(targets, device=device), positions, image_rows))
    return out


def calibration_batches(tokens: TokenSet, device: str, per_forward: int = 1) -> list[Batch]:
    """The calibration forwards of a set: :func:`batches`, with no padding position anywhere.

    ModelOpt's ``max`` calibration keeps the largest magnitude each quantizer sees, so its ranges
    depend only on the set of activations that pass: splitting or stacking rows changes nothing,
    but a padded row would add its padding positions' activations (pad-token embeddings attending
    to real tokens) to the ranges. A text-only set has no padding and is exactly :func:`batches`
    (the same calibration, bit for bit); in a set with image+text rows each batch's unpadded rows
    stay stacked and each padded row runs alone, cut to its real tokens (see :func:`unpadded`).
    """
    return [part for b in batches(tokens, device, per_forward) for part in unpadded(b)]


def unpadded(batch: Batch) -> list[Batch]:
    """``batch`` as forwards without padding: its unpadded rows stacked, each padded row alone.

    A padded row runs cut to its real tokens (the leading ones: padding is on the right) with its
    own image: a batch's ``pixel_values`` are its image rows' patches in row order, one image per
    image row (as ``data`` builds them), each of ``prod(grid)`` patch rows.
    """
    mask = batch.inputs.get("attention_mask")
    if mask is None:
        return [batch]
    seq = mask.shape[1]
    lengths = mask.sum(1)
    if bool((lengths == seq).all()):
        return [batch]
    if not torch.equal(mask.bool(), torch.arange(seq, device=mask.device) < lengths[:, None]):
        raise ValueError("calibration batches need right-padded rows")
    grids = batch.inputs.get("image_grid_thw")
    patches = [int(g.prod()) for g in grids] if grids is not None else []
    if len(patches) != sum(batch.image_rows):
        raise ValueError("each image row must hold exactly one image")
    ends = np.cumsum([0, *patches]).tolist()
    images = iter(range(len(patches)))
    own = [next(images) if img else None for img in batch.image_rows]  # each row's image
    n = lengths.tolist()
    full = [r for r in range(len(n)) if n[r] == seq]
    parts = [_rows(batch, full, seq, own, ends)] if full else []
    return parts + [_rows(batch, [r], n[r], own, ends) for r in range(len(n)) if n[r] < seq]


def _rows(
    batch: Batch, rows: list[int], length: int, own: list[int | None], ends: list[int]
) -> Batch:
    """The batch's ``rows``, their first ``length`` positions, with their images' patches
    (image ``i`` is ``pixel_values[ends[i]:ends[i + 1]]``)."""
    idx = torch.tensor(rows, device=batch.input_ids.device)
    inputs = {k: batch.inputs[k][idx, :length] for k in ("input_ids", "attention_mask")}
    images = [i for i in (own[r] for r in rows) if i is not None]
    if images:
        pixels = batch.inputs["pixel_values"]
        inputs["pixel_values"] = torch.cat([pixels[ends[i] : ends[i + 1]] for i in images])
        inputs["image_grid_thw"] = batch.inputs["image_grid_thw"][images]
        inputs["mm_token_type_ids"] = batch.inputs["mm_token_type_ids"][idx, :length]
    assert batch.targets is not None
    return Batch(
        inputs,
        batch.targets[idx, :length],
        tuple(batch.positions[r] for r in rows),
        tuple(batch.image_rows[r] for r in rows),
    )


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
