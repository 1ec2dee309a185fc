"""The export checker on hand-made checkpoints: safetensors headers written here, no torch.

Each broken folder differs from a good one in one way and must fail naming that reason.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from orchestrator.export.check import check_export, is_skipped, loaders, read_tensors
from orchestrator.export.formats import (
    compressed_tensors_config,
    ct_never_fp8,
    modelopt_never_fp8,
)
from orchestrator.model.families import FAMILIES

pytestmark = pytest.mark.unit
H = 4  # hidden size of the hand-made model
PROJ = {
    "self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
}
SCALE = {"modelopt": ([], "F32"), "compressed-tensors": ([1], "BF16")}
VL_IGNORE = ct_never_fp8(FAMILIES["qwen2_5_vl"])
# where the checkpoint (save_pretrained, ModelOpt's exporter) puts the decoder and the vision tower:
# Qwen2-VL and Qwen2.5-VL keep their original hub layout, Qwen3-VL was published in the new one
LAYOUT = {"qwen3_vl": ("model.language_model.", "model.visual.")}
HUB_LAYOUT = ("model.", "visual.")


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """A valid safetensors file of zeros with these dtypes and shapes."""
    width = {"F8_E4M3": 1, "BF16": 2, "F32": 4}
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = width[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(offset))


def linear_names(blocks: int) -> list[str]:
    return [
        f"model.layers.{b}.{part}.{p}"
        for b in range(blocks)
        for part, ps in PROJ.items()
        for p in ps
    ]


def spelled(model_type: str, name: str) -> str:
    """A hub-spelling name (``model.layers.N``, ``visual.``) in the family's checkpoint layout."""
    decoder, tower = LAYOUT.get(model_type, HUB_LAYOUT)
    if name.startswith("visual."):
        return tower + name[len("visual.") :]
    return decoder + name[len("model.") :] if name.startswith("model.") else name


def make_export(
    root: Path, fmt: str, fp8: list[str], blocks: int = 2, model_type: str = "qwen2_5_vl", **edit
) -> Path:
    """A checkpoint in the family's layout (as ModelOpt writes it) with ``fp8`` modules (hub
    spelling) in FP8; the lists as the export writes them. ``tensors`` and ``drop`` name tensors
    as they are written."""
    shape, dtype = SCALE[fmt]
    family = FAMILIES[model_type]
    fp8 = [spelled(model_type, m) for m in fp8]
    linear = [spelled(model_type, m) for m in linear_names(blocks)]
    t = {spelled(model_type, "model.embed_tokens.weight"): ("BF16", [16, H])}
    if family.vision:
        t[spelled(model_type, "visual.blocks.0.attn.qkv.weight")] = ("BF16", [3 * H, H])
        t[spelled(model_type, "visual.merger.mlp.0.weight")] = ("BF16", [H, H])
    for m in linear:
        t[f"{m}.weight"] = ("F8_E4M3" if m in fp8 else "BF16", [H, H])
        if m in fp8:
            t[f"{m}.weight_scale"] = (dtype, shape)
            t[f"{m}.input_scale"] = (dtype, shape)
    t.update(edit.get("tensors", {}))
    for k in edit.get("drop", ()):
        del t[k]
    root.mkdir()
    write_safetensors(root / "model.safetensors", t)
    bf16 = [m for m in linear if m not in fp8]
    if fmt == "modelopt":
        entries = [*modelopt_never_fp8(family, t), *bf16]
        qc = {"quant_method": "modelopt", "quant_algo": "FP8", "ignore": entries}
        hf = {"quantization": {"quant_algo": "FP8", "exclude_modules": entries}}
        (root / "hf_quant_config.json").write_text(json.dumps(hf))
    else:
        args = {
            "num_bits": 8,
            "type": "float",
            "strategy": "tensor",
            "symmetric": True,
            "dynamic": False,
        }
        entries = [*ct_never_fp8(family), *(family.transformers_name(m) for m in bf16)]
        qc = {
            "quant_method": "compressed-tensors",
            "format": "float-quantized",
            "config_groups": {
                "group_0": {"targets": ["Linear"], "weights": args, "input_activations": args}
            },
            "ignore": entries,
        }
    qc["ignore"] = edit.get("ignore", qc["ignore"])
    if fmt == "modelopt":
        hf["quantization"]["exclude_modules"] = qc["ignore"]
        (root / "hf_quant_config.json").write_text(json.dumps(hf))
    (root / "config.json").write_text(
        json.dumps({"model_type": model_type, "quantization_config": qc})
    )
    params = sum(H * H for _ in linear) + 16 * H
    params += (3 * H * H + H * H) if family.vision else 0
    model_bytes = 2 * params - H * H * len(fp8)
    scheme = {
        "name": "s",
        "fp8_modules": [family.transformers_name(m) for m in fp8],
        "model_bytes": model_bytes,
    }
    (root / "scheme.json").write_text(json.dumps(scheme))
    return root


BLOCK0 = [m for m in linear_names(2) if ".0." in m]
MIXED = BLOCK0 + ["model.layers.1.mlp.down_proj", "model.layers.1.self_attn.o_proj"]


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
@pytest.mark.parametrize("fmt", ["modelopt", "compressed-tensors"])
def test_a_good_export_passes(tmp_path, fmt, model_type):
    assert check_export(make_export(tmp_path / "x", fmt, MIXED, model_type=model_type)) == []


def test_header_reader_sees_dtypes_shapes_and_bytes(tmp_path):
    t = read_tensors(make_export(tmp_path / "x", "compressed-tensors", BLOCK0))
    assert t["model.layers.0.self_attn.q_proj.weight"].dtype == "F8_E4M3"
    assert t["model.layers.0.self_attn.q_proj.weight_scale"].shape == (1,)
    assert t["model.layers.1.mlp.up_proj.weight"].nbytes == 2 * H * H


@pytest.mark.parametrize("fmt", ["modelopt", "compressed-tensors"])
def test_split_fused_group_fails(tmp_path, fmt):
    fp8 = [m for m in MIXED if not m.endswith("k_proj")]  # q and v FP8, k BF16
    problems = check_export(make_export(tmp_path / "x", fmt, fp8))
    assert any("model.layers.0.self_attn.qkv_proj: fused shards mix" in p for p in problems)
    assert any("vLLM" in p and "some but not all" in p for p in problems)


@pytest.mark.parametrize("fmt", ["modelopt", "compressed-tensors"])
def test_missing_scale_fails(tmp_path, fmt):
    folder = make_export(
        tmp_path / "x", fmt, MIXED, drop=["model.layers.0.mlp.down_proj.weight_scale"]
    )
    assert "model.layers.0.mlp.down_proj: FP8 weight without weight_scale" in check_export(folder)


def test_scale_of_the_wrong_layout_fails(tmp_path):
    folder = make_export(
        tmp_path / "x",
        "compressed-tensors",
        MIXED,
        tensors={"model.layers.0.mlp.up_proj.input_scale": ("F32", [])},
    )
    assert any(
        "up_proj.input_scale: shape [] F32; compressed-tensors expects [1] BF16" in p
        for p in check_export(folder)
    )


def test_ignore_entry_in_hub_spelling_matches_nothing_in_transformers(tmp_path):
    """The issue's NaN logits: hub names in a compressed-tensors ignore list select nothing."""
    hub = [*VL_IGNORE, *(m for m in linear_names(2) if m not in MIXED)]
    problems = check_export(make_export(tmp_path / "x", "compressed-tensors", MIXED, ignore=hub))
    assert any(p.startswith("transformers: ignore entry 'model.layers.1.") for p in problems)
    assert any(
        p.startswith("transformers: would build model.language_model.layers.1.") for p in problems
    )
    # vLLM maps hub names itself, so it alone would have loaded this folder as planned
    assert not any(p.startswith("vLLM") for p in problems)


def test_ignore_entry_that_names_no_module_fails(tmp_path):
    folder = make_export(
        tmp_path / "x",
        "modelopt",
        MIXED,
        ignore=[
            "lm_head",
            "model.embed_tokens",
            "visual*",
            "model.layers.9.mlp.up_proj",
            *(m for m in linear_names(2) if m not in MIXED),
        ],
    )
    assert (
        "vLLM modelopt: ignore entry 'model.layers.9.mlp.up_proj' matches no module"
        in check_export(folder)
    )


@pytest.mark.parametrize(
    "model_type,fmt,module,shape",
    [
        ("qwen2_5_vl", "modelopt", "visual.merger.mlp.0", [H, H]),
        ("qwen2_5_vl", "compressed-tensors", "visual.merger.mlp.0", [H, H]),
        ("qwen2_5_vl", "modelopt", "model.embed_tokens", [16, H]),
        ("qwen2", "modelopt", "model.embed_tokens", [16, H]),
        ("qwen3", "modelopt", "model.embed_tokens", [16, H]),
    ],
)
def test_fp8_never_fp8_weight_fails(tmp_path, model_type, fmt, module, shape):
    """The rule is the family table's, so a text family's never-FP8 parts are checked too."""
    scale_shape, dtype = SCALE[fmt]
    folder = make_export(
        tmp_path / "x",
        fmt,
        MIXED,
        model_type=model_type,
        tensors={
            f"{module}.weight": ("F8_E4M3", shape),
            f"{module}.weight_scale": (dtype, scale_shape),
            f"{module}.input_scale": (dtype, scale_shape),
        },
    )
    problems = check_export(folder)
    assert any(p.startswith(f"{module}: vision, embedding and lm_head") for p in problems)


def test_each_family_lists_its_never_fp8_parts_in_its_own_spelling(tmp_path):
    """Issue 23: a text family's lists held a vision-tower regex and Qwen2.5-VL names; every
    entry now comes from the family table. ModelOpt's list is spelled like the checkpoint,
    compressed-tensors' like transformers 5's modules, with a regex where vLLM differs."""
    either_head = r"re:^(?:lm_head|language_model\.lm_head)$"
    either_tower = r"re:^(?:model\.visual\.|visual\.)"
    for text in ("qwen2", "qwen3"):
        family = FAMILIES[text]
        assert ct_never_fp8(family) == ["lm_head"]
        folder = make_export(tmp_path / text, "modelopt", MIXED, model_type=text)
        assert modelopt_never_fp8(family, read_tensors(folder)) == ["lm_head", "model.embed_tokens"]
        assert compressed_tensors_config(family, ["model.layers.1.mlp.up_proj"])["ignore"] == [
            "lm_head",
            "model.layers.1.mlp.up_proj",
        ]
    for vl in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        assert ct_never_fp8(FAMILIES[vl]) == [either_head, either_tower]
    hub = read_tensors(make_export(tmp_path / "q25", "modelopt", MIXED))
    assert modelopt_never_fp8(FAMILIES["qwen2_5_vl"], hub) == [
        "lm_head",
        "model.embed_tokens",
        "visual*",
    ]
    new = read_tensors(make_export(tmp_path / "q3", "modelopt", MIXED, model_type="qwen3_vl"))
    assert modelopt_never_fp8(FAMILIES["qwen3_vl"], new) == [
        "lm_head",
        "model.language_model.embed_tokens",
        "model.visual*",
    ]


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3"])
def test_a_text_family_export_in_vl_spelling_is_refused(tmp_path, model_type):
    """The old bug: a Qwen2ForCausalLM's ignore list in Qwen2.5-VL's names. Neither loader has a
    ``model.language_model.`` or a vision tower, so every BF16 layer would load as FP8."""
    vl = [
        r"re:^(language_model\.)?lm_head$",
        r"re:^(model\.)?visual\.",
        *(
            m.replace("model.", "model.language_model.", 1)
            for m in linear_names(2)
            if m not in MIXED
        ),
    ]
    folder = make_export(
        tmp_path / "x", "compressed-tensors", MIXED, model_type=model_type, ignore=vl
    )
    problems = check_export(folder)
    for loader in ("transformers", "vLLM compressed-tensors"):
        assert f"{loader}: ignore entry {vl[1]!r} matches no module" in problems
        assert f"{loader}: ignore entry {vl[2]!r} matches no module" in problems
    layer = "model.layers.1.self_attn.q_proj"
    assert f"transformers: would build {layer} as FP8 but the plan keeps it BF16" in problems
    fused = "model.layers.1.self_attn.qkv_proj"
    assert f"vLLM compressed-tensors: would build {fused} as FP8 but the plan keeps it BF16" in (
        problems
    )


def test_an_unsupported_model_type_is_refused(tmp_path):
    folder = make_export(tmp_path / "x", "modelopt", MIXED)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    assert check_export(folder)[0].startswith("config.json model_type 'llama' is not supported")


def test_vision_tower_not_ignored_would_be_quantized(tmp_path):
    entries = [e for e in VL_IGNORE if "visual" not in e]
    entries += [
        m.replace("model.", "model.language_model.", 1) for m in linear_names(2) if m not in MIXED
    ]
    problems = check_export(
        make_export(tmp_path / "x", "compressed-tensors", MIXED, ignore=entries)
    )
    assert any("would build model.visual.merger.mlp.0 as FP8" in p for p in problems)


def test_modelopt_block_glob_also_skips_block_ten_in_vllm(tmp_path):
    """vLLM matches ``model.layers.1*`` as a substring: block 1 BF16 drags block 10 along."""
    fp8 = [m for m in linear_names(11) if ".1." not in m]
    glob = ["lm_head", "model.embed_tokens", "visual*", "model.layers.1*"]
    problems = check_export(make_export(tmp_path / "x", "modelopt", fp8, blocks=11, ignore=glob))
    block10 = "language_model.model.layers.10.self_attn.qkv_proj"
    assert f"vLLM modelopt: would skip {block10} but the plan puts it in FP8" in problems
    exact = [
        "lm_head",
        "model.embed_tokens",
        "visual*",
        *(m for m in linear_names(11) if ".1." in m),
    ]
    folder = make_export(tmp_path / "y", "modelopt", fp8, blocks=11, ignore=exact)
    assert check_export(folder) == []


def test_bytes_beyond_the_plan_fail(tmp_path):
    folder = make_export(
        tmp_path / "x", "modelopt", MIXED, tensors={"model.extra.weight": ("BF16", [64, H])}
    )
    assert any(p.startswith("tensor bytes") for p in check_export(folder))


def test_vllm_reads_either_spelling_of_an_ignore_entry():
    ct = loaders("compressed-tensors", FAMILIES["qwen2_5_vl"])[1]
    for entry in ("model.layers.3.mlp.down_proj", "model.language_model.layers.3.mlp.down_proj"):
        assert is_skipped(ct, "language_model.model.layers.3.mlp.down_proj", ct.entries([entry]))
    assert is_skipped(ct, "visual.blocks.0.attn.qkv", ct.entries(VL_IGNORE))
    assert is_skipped(ct, "language_model.lm_head", ct.entries(VL_IGNORE))


def test_check_command_exits_1_with_the_reasons(tmp_path, capsys):
    from orchestrator.export.__main__ import main

    folder = make_export(
        tmp_path / "x", "modelopt", MIXED, drop=["model.layers.0.mlp.up_proj.input_scale"]
    )
    assert main(["--check", str(folder)]) == 1
    assert (
        "check failed: model.layers.0.mlp.up_proj: FP8 weight without input_scale"
        in capsys.readouterr().err
    )
    assert main(["--check", str(make_export(tmp_path / "y", "modelopt", MIXED))]) == 0


def poke(path: Path, name: str, value: bytes) -> None:
    """Write ``value`` over the start of tensor ``name``'s data in a safetensors file."""
    with path.open("r+b") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        start, _ = json.loads(f.read(size))[name]["data_offsets"]
        f.seek(8 + size + start)
        f.write(value)


@pytest.mark.parametrize("fmt", ["modelopt", "compressed-tensors"])
@pytest.mark.parametrize("scale", ["weight_scale", "input_scale"])
def test_unequal_scales_in_a_fused_group_fail_when_the_sweep_shared_them(tmp_path, fmt, scale):
    """With ``export.fused_scales: vllm`` each fused group's shards hold one weight and one input
    scale (the bytes compared, not decoded); per-shard scales are fine when the sweep had them."""
    folder = make_export(tmp_path / "x", fmt, MIXED)
    poke(folder / "model.safetensors", f"model.layers.0.mlp.up_proj.{scale}", b"\x00\x40")
    scheme = json.loads((folder / "scheme.json").read_text())
    for rule, failing in (("per_shard", False), ("vllm", True)):
        (folder / "scheme.json").write_text(
            json.dumps({**scheme, "export": {"fused_scales": rule}})
        )
        problems = check_export(folder)
        want = f"model.layers.0.mlp.gate_up_proj: shards gate_proj, up_proj hold different {scale}s"
        assert any(want in p for p in problems) == failing, (rule, problems)
        assert len(problems) == int(failing), problems
