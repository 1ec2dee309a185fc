"""Does an exported folder load as planned where it is deployed? A check over the saved files alone.

``python -m orchestrator.export --check DIR`` (and every export, before the folder is renamed into
place) reads the safetensors headers, ``config.json``, ``hf_quant_config.json`` and the export's
``scheme.json``; it imports no torch, so it runs anywhere in milliseconds and reads no tensor data
beyond the fused groups' scalar scales.

A loader decides per module whether it is FP8 from the exclude/ignore list, not from the tensors,
so the list is checked the way each target loader reads it, with the module names that loader
gives the family in ``config.json``'s ``model_type`` (the family table's naming,
:mod:`orchestrator.model.families`):

- **transformers 5 + compressed-tensors** names modules as the family's transformers class does
  (:meth:`Family.transformers_name`: ``model.language_model.layers.N…`` and ``model.visual…`` for
  a VL family, ``model.layers.N…`` for a text one; ``lm_head``) and matches an ignore entry by
  equality or, for ``re:…``, by ``re.match``; an entry in another spelling matches nothing there
  (a VL family's hub spelling ``model.layers.N…``, or the VL spelling in a text model).
- **vLLM compressed-tensors** maps checkpoint names and ignore entries with the
  ``hf_to_vllm_mapper`` of the family's vLLM class (:meth:`Family.vllm_name`; the text classes
  have none), fuses q/k/v into ``qkv_proj`` and gate/up into ``gate_up_proj``, and refuses a fused
  layer whose shards disagree.
- **vLLM modelopt** splits a trailing ``x*`` into ``x`` and ``x.*``, maps as above, then skips a
  layer on an exact (fused-shard) match, on a *substring* match, or on an ``fnmatch``. The
  substring rule is why an entry ``model.layers.1*`` also skips ``layers.10``…``19``: ModelOpt's
  own globs are only safe below 11 blocks, so the export writes exact names.

For every loader the set of Linear layers it would build as FP8 must equal the FP8 weights in the
files and the plan's ``fp8_modules``; every entry must select something; fused groups agree; no
vision, embedding or ``lm_head`` weight is FP8 (the family table's rule, for the ``model_type`` in
``config.json``); each FP8 weight has its weight and input scales in the format's shape and dtype;
and the tensor bytes equal the plan's ``model_bytes`` plus at most the scales; where ``scheme.json``
says the sweep had vLLM's fused scales (``export.fused_scales``), the shards of each fused group
hold one weight scale and one input scale (the only tensor data read: a few scalars). Problems are
returned as sentences, one per finding; an empty list means it passed.
"""

from __future__ import annotations

import fnmatch
import json
import re
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from orchestrator.model.families import EMBEDDINGS, FAMILIES, Family, supported_list

FP8 = "F8_E4M3"
SCALES = ("weight_scale", "input_scale")


# where each format keeps a per-tensor scale: ModelOpt writes scalars in float32; compressed-tensors
# allocates shape (1,) in the checkpoint's dtype (float32 scales break bf16 matmuls in
# transformers < 5.23 on CPU: "self and mat2 must have the same dtype")
SCALE_LAYOUT = {"modelopt": ((), "F32"), "compressed-tensors": ((1,), "BF16")}
FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
_SHARD_TO_FUSED = {s: f for f, shards in FUSED.items() for s in shards}


@dataclass(frozen=True)
class Tensor:
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


def read_tensors(folder: Path) -> dict[str, Tensor]:
    """Name → dtype/shape/bytes of every tensor in the folder's safetensors files (headers only)."""
    out: dict[str, Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with path.open("rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        header.pop("__metadata__", None)
        for name, t in header.items():
            start, end = t["data_offsets"]
            out[name] = Tensor(t["dtype"], tuple(t["shape"]), end - start)
    return out


def fused_name(name: str) -> str:
    head, _, proj = name.rpartition(".")
    return f"{head}.{_SHARD_TO_FUSED[proj]}" if proj in _SHARD_TO_FUSED else name


def _shards(layer: str) -> list[str]:
    head, _, proj = layer.rpartition(".")
    return [f"{head}.{s}" for s in FUSED[proj]] if proj in FUSED else [layer]


def _ct_match(name: str, entry: str) -> bool:
    return re.match(entry[3:], name) is not None if entry.startswith("re:") else name == entry


def _modelopt_entries(family: Family, entries: Iterable[str]) -> list[str]:
    out: list[str] = []
    for e in entries:
        out += [e[:-1], e[:-1] + ".*"] if len(e) >= 2 and e[-1] == "*" and e[-2] != "." else [e]
    return [family.vllm_name(e) for e in out]


def _vllm_entries(family: Family, entries: Iterable[str]) -> list[str]:
    return [family.vllm_name(e) for e in entries]


def _modelopt_entry_skips(layer: str, entry: str) -> bool:
    """vLLM modelopt's rules after the exact match: a substring of the layer name, or a glob."""
    return (
        (entry != layer and entry in layer)
        or (layer.startswith("language_model.") and entry in layer.removeprefix("language_model."))
        or fnmatch.fnmatchcase(layer, entry)
    )


@dataclass(frozen=True)
class Loader:
    """How one runtime names modules and decides that a layer stays unquantized."""

    name: str
    module_name: Callable[[str], str]
    fuses: bool
    entries: Callable[[Sequence[str]], list[str]]
    entry_matches: Callable[[str, str], bool]  # (module or shard name, mapped entry)
    modelopt_rules: bool = False


def loaders(fmt: str, family: Family) -> tuple[Loader, ...]:
    """The loaders that read ``fmt``, each with the names it gives this family's modules."""
    vllm = family.vllm_name
    if fmt == "compressed-tensors":
        return (
            Loader("transformers", family.transformers_name, False, list, _ct_match),
            Loader(
                "vLLM compressed-tensors", vllm, True, partial(_vllm_entries, family), _ct_match
            ),
        )
    modelopt = partial(_modelopt_entries, family)
    return (Loader("vLLM modelopt", vllm, True, modelopt, _ct_match, modelopt_rules=True),)


class FusedSplit(ValueError):
    """A loader refuses a fused layer whose shards are not all listed or all unlisted."""


def is_skipped(loader: Loader, layer: str, entries: Sequence[str]) -> bool:
    """Whether ``loader`` keeps ``layer`` (its own, fused, name) unquantized under ``entries``."""
    shards = _shards(layer) if loader.fuses and layer not in entries else [layer]
    flags = {any(loader.entry_matches(s, e) for e in entries) for s in shards}
    if len(flags) > 1:
        raise FusedSplit(f"{layer}: some but not all of {', '.join(shards)} are listed")
    if flags == {True}:
        return True
    if loader.modelopt_rules:
        return any(_modelopt_entry_skips(layer, e) for e in entries)
    return False


def _fmt(config: Mapping[str, Any]) -> str | None:
    method = (config.get("quantization_config") or {}).get("quant_method")
    return method if method in ("modelopt", "compressed-tensors") else None


def _entries(folder: Path, fmt: str, config: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    qc = config["quantization_config"]
    if fmt == "compressed-tensors":
        return list(qc.get("ignore") or []), []
    problems = []
    exclude = list(qc.get("ignore") or [])
    hf = folder / "hf_quant_config.json"
    if not hf.is_file():
        problems.append("hf_quant_config.json is missing (vLLM's modelopt loader reads it)")
    else:
        listed = json.loads(hf.read_text())["quantization"].get("exclude_modules") or []
        if sorted(listed) != sorted(exclude):
            problems.append("hf_quant_config.json exclude_modules differ from config.json ignore")
        exclude = list(listed)
    return exclude, problems


def check_export(folder: Path) -> list[str]:
    """Every reason this exported folder would not load as its plan says; empty when it passes."""
    folder = Path(folder)
    for need in ("config.json", "scheme.json"):
        if not (folder / need).is_file():
            return [f"{folder}: no {need}; not an export of this project"]
    config = json.loads((folder / "config.json").read_text())
    scheme = json.loads((folder / "scheme.json").read_text())
    family = FAMILIES.get(str(config.get("model_type")))
    if family is None:
        return [
            f"config.json model_type {config.get('model_type')!r} is not supported; "
            f"supported: {supported_list()}"
        ]
    fmt = _fmt(config)
    if fmt is None:
        return [
            "config.json quantization_config.quant_method is neither modelopt nor "
            "compressed-tensors"
        ]
    tensors = read_tensors(folder)
    if not tensors:
        return [f"{folder}: no safetensors files"]
    entries, problems = _entries(folder, fmt, config)
    if fmt == "compressed-tensors":
        problems += _ct_config_problems(config["quantization_config"])
    fp8 = sorted(k[: -len(".weight")] for k, t in tensors.items() if t.dtype == FP8)
    problems += _never_fp8_problems(family, fp8)
    problems += _fused_group_problems(tensors)
    problems += _scale_problems(tensors, fp8, fmt)
    if (scheme.get("export") or {}).get("fused_scales") == "vllm":
        problems += shared_scale_problems(folder, fp8)
    planned = {family.transformers_name(m) for m in scheme.get("fp8_modules", [])}
    written = {family.transformers_name(m) for m in fp8}
    if planned != written:
        extra, missing = sorted(written - planned), sorted(planned - written)
        problems.append(
            f"FP8 weights differ from the plan: not planned {extra[:3]}, not FP8 {missing[:3]}"
        )
    for loader in loaders(fmt, family):
        problems += _loader_problems(loader, tensors, entries, planned)
    problems += _bytes_problems(tensors, scheme)
    return problems


def _ct_config_problems(qc: Mapping[str, Any]) -> list[str]:
    out = []
    if qc.get("format") != "float-quantized":
        out.append(f"quantization_config.format={qc.get('format')!r}; expected 'float-quantized'")
    groups = qc.get("config_groups") or {}
    if not groups:
        out.append("quantization_config.config_groups is empty")
    for gname, g in groups.items():
        for part in ("weights", "input_activations"):
            a = g.get(part) or {}
            want = {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False}
            got = {k: a.get(k) for k in want}
            if got != want:
                out.append(f"config_groups.{gname}.{part} is {got}; expected {want}")
    return out


def _never_fp8_problems(family: Family, fp8: Iterable[str]) -> list[str]:
    return [
        f"{m}: vision, embedding and lm_head weights stay BF16 but this one is FP8"
        for m in fp8
        if family.is_never_fp8(m)
    ]


def _fused_group_problems(tensors: Mapping[str, Tensor]) -> list[str]:
    groups: dict[str, set[str]] = {}
    for k, t in tensors.items():
        if k.endswith(".weight") and len(t.shape) == 2:
            m = k[: -len(".weight")]
            if fused_name(m) != m:
                groups.setdefault(fused_name(m), set()).add(t.dtype)
    return [
        f"{g}: fused shards mix {' and '.join(sorted(d))}; loaders need all FP8 or all BF16"
        for g, d in sorted(groups.items())
        if len(d) > 1 and FP8 in d
    ]


def _scale_problems(tensors: Mapping[str, Tensor], fp8: Sequence[str], fmt: str) -> list[str]:
    shape, dtype = SCALE_LAYOUT[fmt]
    out = []
    for m in fp8:
        for s in SCALES:
            t = tensors.get(f"{m}.{s}")
            if t is None:
                out.append(f"{m}: FP8 weight without {s}")
            elif (t.shape, t.dtype) != (shape, dtype):
                out.append(
                    f"{m}.{s}: shape {list(t.shape)} {t.dtype}; {fmt} expects {list(shape)} {dtype}"
                )
    fp8_set = set(fp8)
    out += [
        f"{k}: a scale without an FP8 weight"
        for k in sorted(tensors)
        if k.rsplit(".", 1)[-1] in SCALES and k.rsplit(".", 1)[0] not in fp8_set
    ]
    return out


def read_bytes(folder: Path, names: Iterable[str]) -> dict[str, bytes]:
    """The raw bytes of the named tensors (a few scalars: the rest of each file is not read)."""
    wanted, out = set(names), {}
    for path in sorted(folder.glob("*.safetensors")):
        with path.open("rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
            for name in sorted(wanted & set(header)):
                start, end = header[name]["data_offsets"]
                f.seek(8 + size + start)
                out[name] = f.read(end - start)
    return out


def shared_scale_problems(folder: Path, fp8: Sequence[str]) -> list[str]:
    """With vLLM's fused scales, each fused group of FP8 shards (q/k/v, gate/up) must hold one
    weight scale and one input scale: the same bytes in every shard, so that a loader that fuses
    (vLLM) and one that does not (transformers) compute the numbers the trials measured."""
    groups: dict[str, list[str]] = {}
    for m in fp8:
        if fused_name(m) != m:
            groups.setdefault(fused_name(m), []).append(m)
    names = [f"{m}.{s}" for shards in groups.values() for m in shards for s in SCALES]
    raw = read_bytes(folder, names)
    out = []
    for group, shards in sorted(groups.items()):
        for s in SCALES:
            if len({raw.get(f"{m}.{s}") for m in shards}) > 1:
                out.append(
                    f"{group}: shards {', '.join(p.rsplit('.', 1)[-1] for p in sorted(shards))} "
                    f"hold different {s}s; scheme.json says fused groups share one (vLLM's rule)"
                )
    return out


def _linear_modules(tensors: Mapping[str, Tensor]) -> list[str]:
    """Checkpoint names of the Linear layers; ``lm_head`` also when tied to the embeddings."""
    names = {
        k[: -len(".weight")]
        for k, t in tensors.items()
        if k.endswith(".weight") and len(t.shape) == 2 and not fnmatch.fnmatch(k, EMBEDDINGS)
    }
    return sorted(names | {"lm_head"})


def _module(loader: Loader, checkpoint_module: str) -> str:
    """The loader's name for a module (mapped with its ``.weight`` suffix, as loaders map keys)."""
    return loader.module_name(checkpoint_module + ".weight")[: -len(".weight")]


def _layer(loader: Loader, checkpoint_module: str) -> str:
    name = _module(loader, checkpoint_module)
    return fused_name(name) if loader.fuses else name


def _loader_problems(
    loader: Loader, tensors: Mapping[str, Tensor], raw: Sequence[str], planned: set[str]
) -> list[str]:
    entries = loader.entries(raw)
    linear = _linear_modules(tensors)
    layers = sorted({_layer(loader, m) for m in linear})
    out, quantized = [], set()
    for layer in layers:
        try:
            if not is_skipped(loader, layer, entries):
                quantized.add(layer)
        except FusedSplit as e:
            out.append(f"{loader.name}: {e}")
    expected = {_layer(loader, m) for m in planned}
    for layer in sorted(quantized - expected):
        out.append(f"{loader.name}: would build {layer} as FP8 but the plan keeps it BF16")
    for layer in sorted(expected - quantized):
        out.append(f"{loader.name}: would skip {layer} but the plan puts it in FP8")
    universe = [_module(loader, k[: -len(".weight")]) for k in tensors if k.endswith(".weight")]
    universe.append(_module(loader, "lm_head"))
    for entry in raw:
        mapped = loader.entries([entry])  # a modelopt ``x*`` becomes two entries
        if not any(
            loader.entry_matches(u, e) or (loader.modelopt_rules and _modelopt_entry_skips(u, e))
            for u in universe
            for e in mapped
        ):
            out.append(f"{loader.name}: ignore entry {entry!r} matches no module")
    return out


def _bytes_problems(tensors: Mapping[str, Tensor], scheme: Mapping[str, Any]) -> list[str]:
    want = scheme.get("model_bytes")
    if want is None:
        return ["scheme.json has no model_bytes to compare the files with"]
    scale_bytes = sum(t.nbytes for k, t in tensors.items() if k.rsplit(".", 1)[-1] in SCALES)
    total = sum(t.nbytes for t in tensors.values())
    if not want <= total <= want + scale_bytes:
        return [
            f"tensor bytes {total} differ from the plan's model_bytes {want} by more than "
            f"the {scale_bytes} bytes of scales"
        ]
    return []
