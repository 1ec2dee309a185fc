"""Time the FP8 sweep on GPUs against one plain AutoQuantize run per grid point (issue 5).

    python scripts/bench_sweep.py run --work /tmp/fp8bench --out /tmp/fp8bench/out        # one GPU
    python scripts/bench_sweep.py run --stages sweep:64,loop:64 --work ... --out ...      # a subset
    python scripts/bench_sweep.py run --stages scale:1,scale:2,scale:4 --work ... --out ...  # GPUs
    python scripts/bench_sweep.py report --out <dir of stage JSONs> --json <merged.json>
    python scripts/bench_sweep.py run --smoke --work /tmp/fp8smoke --out /tmp/fp8smoke/out  # CPU

Stages (each writes ``<out>/<stage>.json`` and a log; ``report`` merges them into one JSON and
prints the table; docs/benchmarks.md explains every number):

* ``kernel``: build ModelOpt's FP8 CUDA extension into an empty ``TORCH_EXTENSIONS_DIR`` in a fresh
  process, then load it from a second one. Every later process (the sweep's Ray workers, each
  per-point run) inherits that directory and only loads; their load times and the library's
  modification time prove it was compiled once.
* ``model``: build the ``qwen2.5-vl-3b-random`` preset (real architecture, random weights) and
  ``save_pretrained`` it under ``--work``; everything after loads it back from disk.
* ``probe``: model load, BF16 and fake-quant forward throughput, the resident Evaluator's phases,
  per-plan evaluation, folded weights, host copies, calibrate-once vs recalibrate-per-plan KL.
* ``sweep:S``: ``python -m orchestrator.sweep`` end to end (Ray Tune, MLflow, scoring with S
  batches, 24 points, selection); per-trial phases from ``trials.parquet``.
* ``loop:S``: the way without the product: per grid point a fresh process loads the model and runs
  one ModelOpt AutoQuantize at that point's budget (calibration and scoring with S batches, the
  same settings and code as the sweep's scoring), then measures the result against BF16. Its cost
  does not depend on the point, so ``--loop-points`` points are timed and the mean scaled to 24.
* ``scale:N``: a 48-point sweep (both scoring methods x 8 effective-bits values x 3 coverages,
  8 score batches) on N GPUs of this machine, end to end; ``report`` divides ``scale:1``'s wall
  time by each other's. The scoring phase and the trial phase are also timed from the log.

The sweep and every child process import ``orchestrator`` from ``--src`` (default: this checkout),
so a run can pin a committed snapshot while the working tree changes.

``--smoke`` runs the stages' code on the ``tiny-qwen2.5-vl`` preset with CPU-sized data, a 3-point
grid and score budget 2 (default stages ``kernel,model,probe,sweep:2,loop:2,scale:1,kernel_after``,
one loop point, ``scale:1`` both methods on that grid). A stage that needs CUDA (``kernel``,
``kernel_after``, ``scale:N`` beyond the visible GPUs, but ``scale:1`` runs on one CPU worker) is
skipped where there is none, with the reason printed, so on CPU the smoke runs everything else;
``tests/integration/test_scripts.py`` runs it there, so the benchmark cannot rot.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "benchmarks" / "sweep_3b.yaml"
PRESET = "qwen2.5-vl-3b-random"
RECIPE = "FP8_DEFAULT_CFG"
SCALE_METHODS = ["gradient", "kl_div"]  # x 8 budgets x 3 coverages = 48 points
SMOKE_SETS = [
    "data.seq_len=64",
    "data.batch_size=2",
    "data.calib_batches=2",
    "data.eval_batches=2",
    "scoring.num_calib_steps=2",
    "search.effective_bits=[8,12,14]",  # FP8 shares 100%, 50%, 25%: selection names all three
    "search.coverage=[1.0]",
    "search.gpus=auto",
    "search.max_concurrent=1",  # one CPU worker: a second one only competes for the cores
]
# the libraries whose versions each probe records
BENCH_LIBRARIES = ("torch", "transformers", "nvidia-modelopt", "ray", "mlflow-skinny", "pulp")
EXT_LINE = re.compile(r"Loaded extension (\S+) in ([0-9.]+) seconds")


# --- shared helpers -------------------------------------------------------------------------------


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, sort_keys=True, default=str) + "\n")


def sweep_sets(args: argparse.Namespace, budget: int) -> list[str]:
    """The --set overrides that turn benchmarks/sweep_3b.yaml into this run's sweep."""
    sets = [f"model.source={Path(args.work) / 'model'}"]
    sets += SMOKE_SETS if args.smoke else []
    calib = 2 if args.smoke else 8
    sets += [f"data.score_batches={max(budget, calib)}", f"scoring.num_score_steps={budget}"]
    return sets


def child_env(args: argparse.Namespace, gpus: str | None = None) -> dict[str, str]:
    """One extension cache for every process of the run; the snapshot in --src comes first."""
    env = dict(os.environ)
    src = str(Path(args.src).resolve())
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["TORCH_EXTENSIONS_DIR"] = str(Path(args.work).resolve() / "torch_extensions")
    env.setdefault("FP8_SWEEP_NODE_IP", "127.0.0.1")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env.setdefault("RAY_AUTH_MODE", "disabled")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpus
    return env


def run_logged(
    cmd: list[str], log: Path, env: dict[str, str], cwd: Path | None = None
) -> tuple[int, float, str]:
    """Run ``cmd`` with its output in ``log``; (exit code, wall seconds to its exit, output).

    The output goes straight to the file (no pipe): the wall time ends when ``cmd`` exits,
    whatever processes it started and left holding its output.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd
        )
        rc = proc.wait()
    wall = time.perf_counter() - t0
    return rc, wall, log.read_text(errors="replace")


def child(
    args: argparse.Namespace, name: str, extra: list[str], log: Path, gpus: str | None = None
) -> tuple[dict[str, Any], float]:
    """Run this script's ``name`` subcommand in a fresh process; (its JSON, wall seconds)."""
    result = log.parent.parent / "children" / f"{log.stem}.json"
    result.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        name,
        "--work",
        args.work,
        "--src",
        args.src,
        "--result",
        str(result),
        *extra,
    ] + (["--smoke"] if args.smoke else [])
    rc, wall, out = run_logged(cmd, log, child_env(args, gpus))
    if rc != 0 or not result.exists():
        raise RuntimeError(f"{name} failed (exit {rc}); see {log}:\n{out[-3000:]}")
    return json.loads(result.read_text()), wall


def ext_loads(text: str) -> list[dict[str, Any]]:
    return [{"name": m[1], "seconds": float(m[2])} for m in EXT_LINE.finditer(text)]


def grid_size(args: argparse.Namespace, budget: int) -> int:
    """Points of one scoring method's grid in this run's sweep (24 on the 3B config)."""
    from orchestrator.core.config import load_config

    search = load_config(CONFIG, sweep_sets(args, budget)).search
    return len(search.effective_bits) * len(search.coverage) * len(search.strategies)


def device_facts() -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {"card": "cpu", "gpus": 0, "cuda": None}
    return {
        "card": torch.cuda.get_device_name(0),
        "gpus": torch.cuda.device_count(),
        "cuda": torch.version.cuda,
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
        "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
    }


def load_setup(args: argparse.Namespace, budget: int) -> tuple[Any, Any]:
    """(config, data) exactly as the sweep builds them."""
    from orchestrator.core.config import load_config
    from orchestrator.model.datasets import build_data

    cfg = load_config(CONFIG, sweep_sets(args, budget))
    return cfg, build_data(cfg)


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Any, *a: Any, **kw: Any) -> tuple[Any, float]:
    sync()
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    sync()
    return out, time.perf_counter() - t0


# --- children: each runs in a fresh process ------------------------------------------------------


def cmd_kernel(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    import torch

    torch.cuda.init()
    from modelopt.torch.quantization import extensions

    t1 = time.perf_counter()
    ext = extensions.get_cuda_ext_fp8(raise_if_failed=True)
    t2 = time.perf_counter()
    so = Path(ext.__file__)
    return {
        "import_seconds": t1 - t0,
        "load_seconds": t2 - t1,
        "library": str(so),
        "library_mtime": so.stat().st_mtime,
    }


def cmd_model(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from orchestrator.model.presets import PRESET_SEED, PRESETS

    preset = "tiny-qwen2.5-vl" if args.smoke else PRESET
    config = PRESETS[preset]()
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    torch.manual_seed(PRESET_SEED)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.perf_counter()
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16)
    t1 = time.perf_counter()
    dest = Path(args.work) / "model"
    shutil.rmtree(dest, ignore_errors=True)
    model.save_pretrained(dest)
    t2 = time.perf_counter()
    size = sum(f.stat().st_size for f in dest.iterdir())
    return {
        "preset": preset,
        "build_seconds": t1 - t0,
        "save_seconds": t2 - t1,
        "bytes_on_disk": size,
        "params": sum(p.numel() for p in model.parameters()),
    }


def _bf16_bytes(model: Any) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * 2
    return total


def _forwards(fn: Any, batches: list[Any], head: Any = None) -> None:
    """``fn`` over every batch; with ``head``, logits too, one slice of rows at a time."""
    from orchestrator.core.memory import METRIC_ROWS

    for b in batches:
        out = fn(**b.inputs, use_cache=False)[0]
        if head is not None:
            for row in out.reshape(-1, out.shape[-1]).split(METRIC_ROWS):
                head(row)


def _forward_rate(
    fn: Any, batches: list[Any], head: Any = None, repeats: int = 3
) -> dict[str, float]:
    """Median tokens/s of forwards over ``batches`` (one warm-up forward first)."""
    import torch

    with torch.no_grad():
        _forwards(fn, batches[:1], head)
        times = [timed(_forwards, fn, batches, head)[1] for _ in range(repeats)]
    tokens = sum(b.input_ids.numel() for b in batches)
    med = statistics.median(times)
    return {
        "seconds": med,
        "tokens": tokens,
        "tokens_per_s": tokens / med,
        "tokens_per_forward": batches[0].input_ids.numel(),
    }


def _probe_plans(model: Any, profile: Any) -> dict[str, list[str]]:
    mods = profile.eligible_modules(model)
    blocks = sorted({m.block for m in mods})
    return {
        "none": [],
        "quarter": [m.name for m in mods if m.block < blocks[len(blocks) // 4]],
        "half": [m.name for m in mods if m.block % 2 == 0],
        "full": [m.name for m in mods],
    }


def cmd_probe(args: argparse.Namespace) -> dict[str, Any]:
    from orchestrator.model import device, quantize, worker
    from orchestrator.model.batches import batches as make_batches
    from orchestrator.model.loading import load_model
    from orchestrator.runtime.host import library_versions

    cfg, data = load_setup(args, 8)
    dev = device.default_device()
    src = cfg.model.source
    versions = {**library_versions(BENCH_LIBRARIES), "python": platform.python_version()}
    out: dict[str, Any] = {"device": device_facts(), "versions": versions}
    t0 = time.perf_counter()
    import modelopt.torch.quantization  # noqa: F401

    out["modelopt_import_seconds"] = time.perf_counter() - t0
    device.peak_memory(dev)
    (model, profile), load_s = timed(load_model, src, dev, cfg.model.dtype)
    out["model_load_seconds"] = load_s
    out["bf16_model_bytes"] = _bf16_bytes(model)
    body, head = quantize.lm_parts(model)
    stack = worker.stack_size(data.eval)
    out["bf16"] = {
        "model_x1": _forward_rate(model, make_batches(data.eval, dev, 1)),
        f"decoder_x{stack}_sliced_head": _forward_rate(
            body, make_batches(data.eval, dev, stack), head
        ),
    }
    plans = _probe_plans(model, profile)
    device.peak_memory(dev)
    ev = worker.Evaluator(
        model,
        profile,
        data.calib,
        data.eval,
        RECIPE,
        dev,
        reference_cache_bytes=int(cfg.search.reference_cache_gib * 2**30),
        fused_scales=cfg.model.fused_scales,  # as the sweep's trials measure
    )
    out["resident"] = {
        "setup_seconds": ev.setup_seconds,
        "calibration_seconds": ev.calibration_seconds,
        "reference_seconds": ev.reference_seconds,
        "reference_cached": ev._reference is not None,
        "batches_per_forward": min(stack, len(data.eval.tokens)),
        **device.peak_memory(dev),
    }
    evals: dict[str, Any] = {}
    for name in ("none", "full", "half", "quarter", "full"):
        m = ev.evaluate(plans[name])
        evals.setdefault(name, []).append(
            {
                k: m[k]
                for k in (
                    "kl_mean",
                    "top1_agreement",
                    "eval_seconds",
                    "eval_tokens",
                    "peak_gpu_gib",
                    "peak_gpu_reserved_gib",
                )
                if k in m
            }
        )
    out["evaluate"] = evals
    out["fake_quant_forward"] = _fake_quant_variants(ev, plans["full"], data, dev)
    out["recalibrate"] = _recalibrate(ev, plans, data, src, cfg.model.dtype, dev)
    return out


def _fake_quant_variants(ev: Any, full: list[str], data: Any, dev: str) -> dict[str, Any]:
    """Forward throughput with every eligible quantizer on: one batch through the whole model (as
    before this benchmark), stacked through the decoder with sliced logits (as evaluated now), with
    weight quantizers off (what folding leaves), and with weights folded."""
    import modelopt.torch.quantization as mtq

    from orchestrator.model import device, worker
    from orchestrator.model.batches import batches as make_batches

    out: dict[str, Any] = {}
    stack = worker.stack_size(data.eval)
    stacked = make_batches(data.eval, dev, stack)
    ev._set_enabled(full)
    try:
        out["model_x1"] = _forward_rate(ev.model, make_batches(data.eval, dev, 1))
        out[f"decoder_x{stack}_sliced_head"] = _forward_rate(ev.body, stacked, ev.head)
        for qs in ev.quantizers.values():
            qs[0].disable()  # the weight quantizer; inputs stay quantized
        out[f"inputs_only_x{stack}"] = _forward_rate(ev.body, stacked, ev.head)
        ev._set_enabled(full)
        sync()
        t0 = time.perf_counter()
        with mtq.temporarily_fold_weights(ev.model):
            sync()
            fold_s = time.perf_counter() - t0
            rate = _forward_rate(ev.body, stacked, ev.head)
            t1 = time.perf_counter()
        sync()
        out[f"folded_x{stack}"] = {
            **rate,
            "fold_seconds": fold_s,
            "unfold_seconds": time.perf_counter() - t1,
            **device.peak_memory(dev),
        }
    finally:
        ev._set_enabled(())
    return out


def _recalibrate(
    ev: Any, plans: dict[str, list[str]], data: Any, src: str, dtype: str, dev: str
) -> dict[str, Any]:
    """Each plan quantized and calibrated afresh on a freshly loaded model (the way without a
    resident model), against the resident model's toggled result: KL and amax differences."""
    import gc

    import torch

    from orchestrator.model import quantize, worker
    from orchestrator.model.loading import load_model

    out: dict[str, Any] = {}
    for name in ("quarter", "full"):
        toggled = ev.evaluate(plans[name])
        (fresh, _), load_s = timed(load_model, src, dev, dtype)
        timings: dict[str, float] = {}
        fresh, quant_s = timed(
            quantize.quantize_plan,
            fresh,
            RECIPE,
            plans[name],
            data.calib,
            dev,
            worker.stack_size(data.calib),
            timings,
            ev.fused_scales,  # the resident model's fused-layer scales, so like is compared
        )
        body, head = quantize.lm_parts(fresh)
        t0 = time.perf_counter()
        sums = torch.zeros(4, dtype=torch.float64, device=dev)
        count = 0
        with torch.no_grad():
            for i, batch in enumerate(ev.eval_batches):
                q = body(**batch.inputs, use_cache=False)[0]
                part = sums.new_zeros(len(batch.positions), 4)  # one row per sequence
                # the cached BF16 reference, or recomputed with every quantizer off where the
                # cache budget did not hold it
                ref = ev._reference_hidden(i, ())
                worker.accumulate_metrics(part, ref, q, batch, head)
                sums += part.sum(dim=0)
                count += sum(batch.counts())
        kl = sums[0].item() / count
        eval_s = time.perf_counter() - t0
        resident = quantize.module_quantizers(ev.model, plans[name])
        amax_diff = 0.0
        for mod, qs in quantize.module_quantizers(fresh, plans[name]).items():
            for a, b in zip(qs, resident[mod], strict=True):
                amax_diff = max(amax_diff, (a.amax.float() - b.amax.float()).abs().max().item())
        out[name] = {
            "modules": len(plans[name]),
            "kl_toggled": toggled["kl_mean"],
            "kl_recalibrated": kl,
            "kl_abs_difference": abs(kl - toggled["kl_mean"]),
            "amax_max_abs_difference": amax_diff,
            "toggled_eval_seconds": toggled["eval_seconds"],
            "recalibrated_seconds": {
                "load": load_s,
                "setup": quant_s - timings["calibration_seconds"],
                "calibration": timings["calibration_seconds"],
                "evaluation": eval_s,
            },
        }
        del fresh, body, head
        gc.collect()
        if dev.startswith("cuda"):
            torch.cuda.empty_cache()
    return out


def cmd_point(args: argparse.Namespace) -> dict[str, Any]:
    """One grid point the plain way: load, BF16 reference, AutoQuantize at this budget, measure."""
    t_start = time.perf_counter()
    import torch

    from orchestrator.model import device, quantize, worker
    from orchestrator.model.batches import batches as make_batches
    from orchestrator.model.loading import load_model
    from orchestrator.model.scoring import ScoringSetup, run_auto_quantize

    cfg, data = load_setup(args, args.budget)
    dev = device.default_device()
    import modelopt.torch.quantization  # noqa: F401

    t_import = time.perf_counter() - t_start
    kernel_s = 0.0
    if dev.startswith("cuda"):
        from modelopt.torch.quantization import extensions

        _, kernel_s = timed(extensions.get_cuda_ext_fp8, raise_if_failed=True)
    device.peak_memory(dev)
    (model, profile), load_s = timed(load_model, cfg.model.source, dev, cfg.model.dtype)
    batches = make_batches(data.eval, dev, worker.stack_size(data.eval))
    body, head = quantize.lm_parts(model)
    with torch.no_grad():
        refs, ref_s = timed(lambda: [body(**b.inputs, use_cache=False)[0] for b in batches])
    setup = ScoringSetup(
        cfg.model.source,
        None,
        profile.name,
        data.score.hash,
        "gradient",
        RECIPE,
        cfg.scoring.num_calib_steps,
        args.budget,
    )
    state, aq_s = timed(run_auto_quantize, model, profile, data.score, setup, dev, args.bits)
    t0 = time.perf_counter()
    sums = torch.zeros(4, dtype=torch.float64, device=dev)
    count = 0
    with torch.no_grad():
        for b, r in zip(batches, refs, strict=True):
            part = sums.new_zeros(len(b.positions), 4)  # one row per sequence
            worker.accumulate_metrics(part, r, body(**b.inputs, use_cache=False)[0], b, head)
            sums += part.sum(dim=0)
            count += sum(b.counts())
    kl = sums[0].item() / count
    eval_s = time.perf_counter() - t0
    best = dict(state.get("best") or {})
    return {
        "effective_bits": args.bits,
        "score_batches": args.budget,
        "kl_mean": kl,
        "achieved": {
            k: float(v)
            for k, v in dict(best.get("constraints") or {}).items()
            if isinstance(v, (int, float))
        },
        "seconds": {
            "imports_and_data": t_import,
            "kernel_load": kernel_s,
            "model_load": load_s,
            "reference": ref_s,
            "auto_quantize": aq_s,
            "evaluation": eval_s,
            "in_process": time.perf_counter() - t_start,
        },
        **device.peak_memory(dev),
    }


# --- stages: run by the parent -------------------------------------------------------------------


def stage_kernel(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    ext_dir = Path(args.work) / "torch_extensions"
    shutil.rmtree(ext_dir, ignore_errors=True)
    cold, cold_wall = child(args, "_kernel", [], out / "logs" / "kernel-cold.log")
    warm, warm_wall = child(args, "_kernel", [], out / "logs" / "kernel-warm.log")
    return {
        "cold": {**cold, "process_wall": cold_wall},
        "warm": {**warm, "process_wall": warm_wall},
        "extensions_dir": str(ext_dir),
    }


def stage_model(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    res, wall = child(args, "_model", [], out / "logs" / "model.log")
    return {**res, "process_wall": wall}


def stage_probe(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    res, wall = child(args, "_probe", [], out / "logs" / "probe.log")
    return {**res, "process_wall": wall}


def _run_sweep(
    args: argparse.Namespace, name: str, sets: list[str], out: Path, gpus: str | None = None
) -> dict[str, Any]:
    dest = Path(args.work) / name
    shutil.rmtree(dest, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "orchestrator.sweep",
        "--config",
        str(CONFIG),
        "--output",
        str(dest),
    ]
    for s in sets:
        cmd += ["--set", s]
    log = out / "logs" / f"{name}.log"
    rc, wall, text = run_logged(cmd, log, child_env(args, gpus), cwd=Path(args.src))
    if rc not in (0, 3):  # 3: the sweep ran but selection could not name all three schemes
        raise RuntimeError(f"sweep {name} failed (exit {rc}); see {log}:\n{text[-3000:]}")
    from orchestrator.core.config import load_config

    d = load_config(CONFIG, sets).data
    data = {
        k: getattr(d, k)
        for k in (
            "seq_len",
            "batch_size",
            "calib_batches",
            "score_batches",
            "eval_batches",
            "report_batches",
        )
    }
    return {
        "exit_code": rc,
        "wall_seconds": wall,
        "output": str(dest),
        "sets": sets,
        "data": data,
        "phases": _log_phases(text),
        **_sweep_facts(dest, text),
    }


# the sweep's console lines: "HH:MM:SS message" (orchestrator/runtime/logs.py); a progress line
# per finished trial starts "done/total "
_STAMP = re.compile(r"^(\d\d):(\d\d):(\d\d) (.*)$")
_PROGRESS = re.compile(r"\d+/\d+ ")
_MARKERS = {
    "ray_up": "Ray: ",
    "scored": "scores: ",
    "planned": " distinct plan(s)",
    "tune_start": " at a time",
}


def _log_phases(text: str) -> dict[str, float]:
    """Seconds from the sweep's first log line to its landmarks (one-second resolution)."""
    stamps: list[tuple[int, str]] = []
    for line in text.splitlines():
        m = _STAMP.match(line)
        if m:
            stamps.append((int(m[1]) * 3600 + int(m[2]) * 60 + int(m[3]), m[4]))
    if not stamps:
        return {}
    t0 = stamps[0][0]

    def rel(t: int) -> float:
        return float((t - t0) % 86400)

    out = {
        k: rel(next(t for t, msg in stamps if marker in msg))
        for k, marker in _MARKERS.items()
        if any(marker in msg for _, msg in stamps)
    }
    progress = [t for t, msg in stamps if _PROGRESS.match(msg)]
    if progress:
        out["last_trial_done"] = rel(progress[-1])
    out["last_line"] = rel(stamps[-1][0])
    return out


def _sweep_facts(dest: Path, text: str) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from orchestrator.outputs.tables import read_score_tables

    cols = pq.read_table(dest / "trials.parquet").to_pydict()
    keys = [
        "effective_bits",
        "coverage",
        "status",
        "achieved_bits",
        "fp8_fraction",
        "kl_mean",
        "top1_agreement",
        "import_seconds",
        "load_seconds",
        "setup_seconds",
        "calibration_seconds",
        "reference_seconds",
        "eval_seconds",
        "eval_tokens",
        "report_eval_tokens",
        "trial_seconds",
        "resident_hit",
        "peak_gpu_gib",
        "peak_gpu_reserved_gib",
    ]
    trials = [{k: cols[k][i] for k in keys if k in cols} for i in range(len(cols["plan_hash"]))]
    tables = read_score_tables(dest)
    grid = re.search(r"(\d+) grid point\(s\) -> (\d+) distinct plan\(s\)", text)
    scores = re.search(r"scores: (\d+) cached, (\d+) computed in ([0-9.]+)s", text)
    return {
        "grid_points": int(grid[1]) if grid else None,
        "distinct_plans": int(grid[2]) if grid else None,
        "scoring_wall_seconds": float(scores[3]) if scores else None,
        "scores_cached": int(scores[1]) if scores else None,
        "auto_quantize_seconds": {k: t.meta.get("seconds") for k, t in tables.items()},
        # ModelOpt prints its extension loads in the workers, whose output goes to <output>/logs/
        "extension_loads": ext_loads(text)
        + [
            x
            for log in sorted((dest / "logs").glob("*.log"))
            for x in ext_loads(log.read_text(errors="replace"))
        ],
        "trials": trials,
        "workers": json.loads((dest / "workers.json").read_text())
        if (dest / "workers.json").exists()
        else [],
    }


def stage_sweep(args: argparse.Namespace, out: Path, budget: int) -> dict[str, Any]:
    return {
        "score_batches": budget,
        **_run_sweep(args, f"sweep-s{budget}", sweep_sets(args, budget), out),
    }


def stage_loop(args: argparse.Namespace, out: Path, budget: int) -> dict[str, Any]:
    bits = [8.0, 12.0, 14.0, 10.0][: args.loop_points]
    points = []
    for b in bits:
        log = out / "logs" / f"loop-s{budget}-b{b:g}.log"
        res, wall = child(args, "_point", ["--bits", str(b), "--budget", str(budget)], log)
        text = log.read_text()
        points.append({**res, "process_wall": wall, "extension_loads": ext_loads(text)})
    mean = statistics.mean(p["process_wall"] for p in points)
    grid = grid_size(args, budget)
    return {
        "score_batches": budget,
        "points_timed": points,
        "mean_point_seconds": mean,
        "projected_grid_seconds": mean * grid,
        "grid_points": grid,
    }


def stage_scale(args: argparse.Namespace, out: Path, gpus: int) -> dict[str, Any]:
    """The 48-point sweep (both scoring methods x 8 budgets x 3 coverages) on ``gpus`` GPUs (with
    ``--smoke``, both methods on the smoke grid; on a machine without GPUs, one CPU worker)."""
    from orchestrator.runtime.host import local_gpu_count

    methods = "[" + ",".join(SCALE_METHODS) + "]"
    sets = sweep_sets(args, 8) + [f"scoring.methods={methods}"]
    on_gpus = local_gpu_count()[0] > 0
    visible = ",".join(str(i) for i in range(gpus)) if on_gpus else None
    return {
        "gpus": gpus,
        "device": "cuda" if on_gpus else "cpu",
        **_run_sweep(args, f"scale-{gpus}gpu", sets, out, visible),
    }


# --- report ---------------------------------------------------------------------------------------


def _trial_rows(sweep: dict[str, Any], rate: float) -> list[dict[str, Any]]:
    """Per trial: phases, the floor (forward passes it cannot avoid at BF16 speed) and the ratio.

    A worker's first trial must run calibration, the BF16 reference and the plan's evaluation; a
    later one only the evaluation. Model loading is its own phase, once per worker, not in here.
    """
    d = sweep["data"]
    seq = d["seq_len"]
    calib_tokens = d["calib_batches"] * d["batch_size"] * seq
    rows = []
    for t in sweep["trials"]:
        if t.get("status") != "FINISHED":
            continue
        # a trial evaluates the selection set and the report set in one pass (worker.Evaluator)
        scored = (t.get("eval_tokens") or 0.0) + (t.get("report_eval_tokens") or 0.0)
        ev_tokens = scored * seq / (seq - 1)
        first = t.get("resident_hit", 1.0) == 0.0
        tokens = ev_tokens * (2 if first else 1) + (calib_tokens if first else 0)
        phases = (
            t.get("setup_seconds", 0.0)
            + t.get("calibration_seconds", 0.0)
            + t.get("reference_seconds", 0.0)
            + t.get("eval_seconds", 0.0)
        )
        floor = tokens / rate
        rows.append(
            {
                **t,
                "first_on_worker": first,
                "floor_seconds": floor,
                "phase_seconds": phases,
                "ratio_to_floor": phases / floor,
                "eval_tokens_per_s": scored / t["eval_seconds"],
            }
        )
    return rows


def _worker_rows(sweep: dict[str, Any], rate: float) -> list[dict[str, Any]]:
    """Per worker: start-up, and the one-time evaluator build against its floor.

    The build (quantizer insertion, calibration, BF16 reference) runs once per worker after its
    scoring, before any trial; its floor is the calibration and reference passes at BF16 speed.
    """
    d = sweep["data"]
    calib_tokens = d["calib_batches"] * d["batch_size"] * d["seq_len"]
    # the reference pass covers the selection and the report sets
    eval_tokens = (d["eval_batches"] + d.get("report_batches", 0)) * d["batch_size"] * d["seq_len"]
    rows = []
    for w in sweep.get("workers", []):
        if "setup_seconds" not in w:
            continue
        build = w["setup_seconds"] + w["calibration_seconds"] + w["reference_seconds"]
        floor = (calib_tokens + eval_tokens) / rate
        rows.append(
            {
                **w,
                "build_seconds": build,
                "build_floor_seconds": floor,
                "build_ratio_to_floor": build / floor,
            }
        )
    return rows


def report(results: dict[str, Any]) -> dict[str, Any]:
    """Targets of issue 5 from the stage results; missing stages leave their lines out."""
    probe = results.get("probe", {})
    summary: dict[str, Any] = {
        "card": probe.get("device", {}).get("card"),
        "versions": probe.get("versions"),
        "model_load_seconds": probe.get("model_load_seconds"),
        "bf16_model_gib": (probe.get("bf16_model_bytes") or 0) / 2**30,
    }
    rate = max((v["tokens_per_s"] for v in probe.get("bf16", {}).values()), default=None)
    summary["bf16_tokens_per_s"] = rate
    model_bytes = probe.get("bf16_model_bytes")
    for key, sweep in results.items():
        if not key.startswith("sweep-s") or rate is None:
            continue
        budget = sweep["score_batches"]
        rows = _trial_rows(sweep, rate)
        worst = max(rows, key=lambda r: r["ratio_to_floor"]) if rows else None
        peak = max((r["peak_gpu_gib"] for r in rows if r.get("peak_gpu_gib")), default=None)
        workers = _worker_rows(sweep, rate)
        s = {
            "workers": workers,
            "worst_build_ratio_to_floor": max(
                (w["build_ratio_to_floor"] for w in workers), default=None
            ),
            "sweep_wall_seconds": sweep["wall_seconds"],
            "distinct_plans": sweep.get("distinct_plans"),
            "scoring_seconds": sweep.get("scoring_wall_seconds"),
            "phases": sweep.get("phases"),
            "worst_trial_ratio_to_floor": worst["ratio_to_floor"] if worst else None,
            "first_trial_ratio_to_floor": next(
                (r["ratio_to_floor"] for r in rows if r["first_on_worker"]), None
            ),
            "median_trial_ratio_to_floor": statistics.median(r["ratio_to_floor"] for r in rows)
            if rows
            else None,
            "peak_gpu_gib": peak,
            "peak_over_bf16_model": peak * 2**30 / model_bytes if peak and model_bytes else None,
            "trials": rows,
        }
        loop = results.get(f"loop-s{budget}")
        if loop:
            s["loop_projected_seconds"] = loop["projected_grid_seconds"]
            s["speedup_vs_loop"] = loop["projected_grid_seconds"] / sweep["wall_seconds"]
        summary[f"s{budget}"] = s
    kernel = results.get("kernel")
    if kernel:
        mtime = kernel["cold"]["library_mtime"]
        loads = [
            x["seconds"]
            for k, r in results.items()
            if k.startswith(("sweep", "scale"))
            for x in r.get("extension_loads", [])
            if x["name"].endswith("fp8")
        ]
        loads += [
            x["seconds"]
            for k, r in results.items()
            if k.startswith("loop")
            for p in r["points_timed"]
            for x in p["extension_loads"]
            if x["name"].endswith("fp8")
        ]
        summary["kernel"] = {
            "build_seconds": kernel["cold"]["load_seconds"],
            "warm_load_seconds": kernel["warm"]["load_seconds"],
            "later_loads": len(loads),
            "later_load_max_seconds": max(loads, default=None),
            "library_unchanged": results.get("kernel_after", {}).get("library_mtime") == mtime
            if "kernel_after" in results
            else None,
        }
    scales = {r["gpus"]: r for k, r in results.items() if k.startswith("scale-")}
    if 1 in scales:

        def trials_phase(r: dict[str, Any]) -> float | None:
            ph = r.get("phases", {})
            if "tune_start" in ph and "last_trial_done" in ph:
                return ph["last_trial_done"] - ph["tune_start"]
            return None

        one = scales[1]
        summary["scale"] = {
            str(n): {
                "device": r.get("device", "cuda"),
                "grid_points": r.get("grid_points"),
                "wall_seconds": r["wall_seconds"],
                "speedup": one["wall_seconds"] / r["wall_seconds"],
                "scoring_seconds": r.get("scoring_wall_seconds"),
                "trials_phase_seconds": trials_phase(r),
                "distinct_plans": r.get("distinct_plans"),
                "phases": r.get("phases"),
            }
            for n, r in sorted(scales.items())
        }
    return summary


def print_table(results: dict[str, Any], summary: dict[str, Any]) -> None:
    probe = results.get("probe", {})
    dev = probe.get("device", {})
    print(
        f"\ncard: {dev.get('card', '?')}  date: {results.get('date', '?')}  "
        f"versions: {probe.get('versions', {})}"
    )
    if summary.get("bf16_tokens_per_s"):
        print(
            f"bf16 forward: {summary['bf16_tokens_per_s']:.0f} tokens/s; "
            f"model load {probe.get('model_load_seconds', float('nan')):.1f}s"
        )
    kern = summary.get("kernel")
    if kern:
        print(
            f"FP8 extension: built in {kern['build_seconds']:.1f}s, "
            f"warm load {kern['warm_load_seconds']:.2f}s, {kern['later_loads']} later loads "
            f"(max {kern['later_load_max_seconds']}s), "
            f"library unchanged: {kern['library_unchanged']}"
        )
    columns = [  # header, summary key, format
        ("sweep s", "sweep_wall_seconds", "9.1f"),
        ("loop s", "loop_projected_seconds", "9.1f"),
        ("speedup", "speedup_vs_loop", "9.1f"),
        ("scoring", "scoring_seconds", "9.1f"),
        ("plans", "distinct_plans", "7d"),
        ("1st/fl", "first_trial_ratio_to_floor", "8.2f"),
        ("build/fl", "worst_build_ratio_to_floor", "9.2f"),
        ("worst/fl", "worst_trial_ratio_to_floor", "9.2f"),
        ("med/fl", "median_trial_ratio_to_floor", "8.2f"),
        ("peak GiB", "peak_gpu_gib", "10.2f"),
        ("x model", "peak_over_bf16_model", "8.2f"),
    ]
    widths = [int(fmt.split(".")[0].rstrip("d")) for _, _, fmt in columns]
    print(
        "\n"
        + f"{'budget':<8}"
        + "".join(f"{h:>{w}}" for (h, _, _), w in zip(columns, widths, strict=True))
    )
    for key in sorted(k for k in summary if re.fullmatch(r"s\d+", k)):
        cells = []
        for (_, name, fmt), w in zip(columns, widths, strict=True):
            v = summary[key].get(name)
            cells.append(format(v, fmt) if isinstance(v, (int, float)) else f"{'-':>{w}}")
        print(f"{key:<8}" + "".join(cells))
    for n, sc in (summary.get("scale") or {}).items():
        where = f"{n} GPU(s)" if sc["device"] == "cuda" else "1 CPU worker"
        print(
            f"{sc['grid_points']} points on {where}: {sc['wall_seconds']:.1f}s "
            f"(speedup {sc['speedup']:.2f}x), "
            f"scoring {sc['scoring_seconds']}s, trials phase {sc['trials_phase_seconds']}s"
        )


def merge(out: Path) -> dict[str, Any]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}


# --- entry ----------------------------------------------------------------------------------------


STAGES_DEFAULT = "kernel,model,probe,sweep:8,loop:8,sweep:64,loop:64,kernel_after"
STAGES_SMOKE = "kernel,model,probe,sweep:2,loop:2,scale:1,kernel_after"


def cmd_run(args: argparse.Namespace) -> int:
    from orchestrator.runtime.host import local_gpu_count

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    gpus = local_gpu_count()
    for stage in args.stages.split(","):
        name, _, n = stage.partition(":")
        if args.reuse and name in ("kernel", "model") and _present(args, name, out):
            print(f"[{now()}] stage {stage}: kept from an earlier call on this machine", flush=True)
            continue
        why = cannot_run(name, n, gpus, args.smoke)
        if why:
            print(f"[{now()}] stage {stage}: skipped, {why}", flush=True)
            continue
        t0 = time.perf_counter()
        print(f"[{now()}] stage {stage} ...", flush=True)
        if name == "kernel":
            res = stage_kernel(args, out)
        elif name == "kernel_after":
            res = cmd_kernel_info(args)
        elif name == "model":
            res = stage_model(args, out)
        elif name == "probe":
            res = stage_probe(args, out)
        elif name == "sweep":
            res = stage_sweep(args, out, int(n))
        elif name == "loop":
            res = stage_loop(args, out, int(n))
        elif name == "scale":
            res = stage_scale(args, out, int(n))
        else:
            raise SystemExit(f"unknown stage {stage!r}")
        res["stage_seconds"] = time.perf_counter() - t0
        res["finished"] = now()
        label = stage.replace(":", "-s") if name in ("sweep", "loop") else stage.replace(":", "-")
        write_json(out / f"{label}.json", res)
        print(f"[{now()}] stage {stage} done in {res['stage_seconds']:.1f}s", flush=True)
        if args.pack:
            pack(out, Path(args.pack))
    results = merge(out)
    results["date"] = results.get("probe", {}).get("finished", now())[:10]
    print_table(results, report(results))
    return 0


def cannot_run(name: str, n: str, gpus: tuple[int, str], smoke: bool = False) -> str | None:
    """Why a stage cannot run on this machine, or None: the FP8 extension is CUDA code, and
    ``scale:N`` needs N GPUs. Every other stage runs on CPU too (``--smoke``), and so does
    ``scale:1`` with ``--smoke`` on a machine without GPUs (one CPU worker), so that its stage and
    report code run."""
    count, reason = gpus
    if name in ("kernel", "kernel_after") and count == 0:
        return f"ModelOpt's FP8 extension is CUDA code ({reason})"
    if name == "scale" and int(n) > count and not (smoke and int(n) == 1 and count == 0):
        return f"it needs {n} GPU(s) ({reason})"
    return None


def _present(args: argparse.Namespace, name: str, out: Path) -> bool:
    """Whether this machine still holds the stage's product and its record (a second call)."""
    work = Path(args.work)
    made = (
        list((work / "torch_extensions").glob("modelopt_cuda_ext_fp8/*.so"))
        if name == "kernel"
        else [work / "model" / "config.json"]
    )
    return bool(made) and all(m.exists() for m in made) and (out / f"{name}.json").exists()


def pack(out: Path, dest: Path) -> None:
    """The whole --out folder as one .tar.gz, replaced after each stage (a cut-off run keeps it)."""
    import tarfile

    tmp = dest.with_name(dest.name + ".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(out, arcname=out.name)
    os.replace(tmp, dest)


def cmd_kernel_info(args: argparse.Namespace) -> dict[str, Any]:
    """The library's modification time now: unchanged since the build means nothing rebuilt it."""
    libs = list((Path(args.work) / "torch_extensions").glob("modelopt_cuda_ext_fp8/*.so"))
    return {
        "library_mtime": libs[0].stat().st_mtime if libs else None,
        "library": str(libs[0]) if libs else None,
    }


def cmd_report(args: argparse.Namespace) -> int:
    results = merge(Path(args.out))
    results["date"] = args.date or results.get("probe", {}).get("finished", "?")[:10]
    summary = report(results)
    print_table(results, summary)
    if args.json:
        write_json(
            Path(args.json), {"date": results["date"], "summary": summary, "stages": results}
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/bench_sweep.py", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["run", "report", "_kernel", "_model", "_probe", "_point"])
    p.add_argument("--work", default="/tmp/fp8bench", help="model, extension cache, sweep outputs")
    p.add_argument("--out", default="/tmp/fp8bench/out", help="stage JSONs and logs")
    p.add_argument(
        "--src", default=str(ROOT), help="folder whose orchestrator/ every process imports"
    )
    p.add_argument("--stages", help=f"default {STAGES_DEFAULT}; with --smoke {STAGES_SMOKE}")
    p.add_argument(
        "--loop-points", type=int, help="grid points the loop times (default 2; 1 with --smoke)"
    )
    p.add_argument(
        "--smoke", action="store_true", help="tiny preset, CPU-sized data, a 3-point grid"
    )
    p.add_argument(
        "--reuse",
        action="store_true",
        help="run: skip kernel/model when this machine already has them",
    )
    p.add_argument("--pack", help="run: keep a .tar.gz of --out here, refreshed after each stage")
    p.add_argument("--json", help="report: write the merged JSON here")
    p.add_argument("--date", help="report: the run's date")
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--bits", type=float, help=argparse.SUPPRESS)
    p.add_argument("--budget", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.stages = args.stages or (STAGES_SMOKE if args.smoke else STAGES_DEFAULT)
    args.loop_points = args.loop_points or (1 if args.smoke else 2)
    sys.path.insert(0, str(Path(args.src).resolve()))
    if args.command == "run":
        return cmd_run(args)
    if args.command == "report":
        return cmd_report(args)
    fn = {"_kernel": cmd_kernel, "_model": cmd_model, "_probe": cmd_probe, "_point": cmd_point}
    res = fn[args.command](args)
    write_json(Path(args.result), res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
