"""Peak GPU memory of each phase of a worker, next to what the memory plan promises for it.

In one process on one GPU: the sweep's own :class:`~orchestrator.model.worker.Worker` loads the
preset (random weights drawn on the GPU, in BF16), scores with each method asked for, builds the
resident calibrated model (calibration, reference cache) and measures two plans (all FP8, none),
recording each phase's peaks as ``workers.json`` does (``device.PhasePeaks``: allocated and
reserved by the allocator, used as ``nvidia-smi`` sees it). The plan's numbers come from
``orchestrator/core/memory.py`` for the same workload.

    python scripts/bench_memory.py --preset qwen2.5-vl-7b-random --out runs/mem-7b.json
    python scripts/bench_memory.py --preset qwen2.5-vl-32b-random --batch-size 2 \\
        --out runs/mem-32b.json --record orchestrator/core/memory_factors.json
    python scripts/bench_memory.py --smoke --out /tmp/mem.json   # tiny preset on the CPU: nulls

The sweep's settings are the preset's search space (``search_spaces/qwen2_5_vl_<size>_fp8.yaml``;
the demo's for other models) with synthetic text (no image rows) and the batch shape given here;
AutoQuantize calibrates on the space's ``num_calib_steps`` score batches. ``--record``
appends one row per measured phase (GPU only) to a measurements file, whose rows the plan's
factors are then fitted to; ``tests/unit/test_memory.py`` checks the plan against every row.
``--from RESULT --record FILE`` appends the rows of a result written elsewhere (a GPU machine).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PHASE_NAMES = ("load", "gradient", "kl_div", "calibration", "trials")
ALIASES = {"calib": "calibration"}
RECIPE = "FP8_DEFAULT_CFG"
SMOKE_PRESET = "tiny-qwen2.5-vl"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="qwen2.5-vl-7b-random")
    p.add_argument("--out", type=Path, help="where the result goes (required unless --from)")
    p.add_argument("--phases", default="load,calibration,gradient,kl_div,trials")
    p.add_argument("--batch-size", type=int, default=None, help="default: the search space's")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--score-batches", type=int, default=2)
    p.add_argument("--record", type=Path, default=None, help="measurements file to append to")
    p.add_argument(
        "--from",
        dest="from_",
        type=Path,
        default=None,
        help="measure nothing: append the rows of this earlier result to --record",
    )
    p.add_argument("--smoke", action="store_true", help=f"{SMOKE_PRESET} on the CPU, tiny sets")
    args = p.parse_args(argv)
    if args.from_ is None and args.out is None:
        p.exit(2, "--out: missing; give the result's path (or --from RESULT --record FILE)\n")
    if args.from_ is not None and args.record is None:
        p.exit(2, f"--from={args.from_}: needs --record FILE, the measurements file to extend\n")
    phases = [ALIASES.get(x.strip(), x.strip()) for x in args.phases.split(",") if x.strip()]
    bad = [x for x in phases if x not in PHASE_NAMES]
    if bad:
        p.exit(2, f"--phases: {bad[0]!r} is not a phase; allowed: {', '.join(PHASE_NAMES)}\n")
    for name in ("batch_size", "seq_len", "score_batches"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.exit(2, f"--{name.replace('_', '-')}={value}: must be a whole number >= 1\n")
    args.phases = phases
    return args


def sweep_config(args: argparse.Namespace) -> Any:
    """The preset's search space, synthetic data, this run's batch shape and methods."""
    from orchestrator.core.config import DEMO_CONFIG, SEARCH_SPACES, load_config

    preset = SMOKE_PRESET if args.smoke else args.preset
    size = preset.removeprefix("qwen2.5-vl-").removesuffix("-random")
    path = SEARCH_SPACES / f"qwen2_5_vl_{size}_fp8.yaml"
    methods = [m for m in ("gradient", "kl_div") if m in args.phases] or ["gradient"]
    space = path if path.exists() else DEMO_CONFIG
    calib_steps = 2 if args.smoke else load_config(space).scoring.num_calib_steps
    sets = [
        f"model.source={preset}",
        "data.source=synthetic",
        "data.eval_source=null",
        "data.image_source=null",  # text rows: the plan has no vision-tower term
        f"data.score_batches={max(args.score_batches, calib_steps)}",
        f"scoring.num_score_steps={args.score_batches}",
        f"scoring.methods=[{','.join(methods)}]",
        "search.gpus=auto",
    ]
    if args.smoke:
        sets += ["data.seq_len=64", "data.batch_size=2", "data.calib_batches=2"]
        sets += [
            "data.eval_batches=2",
            "data.report_batches=2",
            f"scoring.num_calib_steps={calib_steps}",
        ]
    else:
        sets.append(f"data.seq_len={args.seq_len}")
        if args.batch_size is not None:
            sets.append(f"data.batch_size={args.batch_size}")
    return load_config(space, sets)


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "nvidia-modelopt"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from orchestrator.core.memory import FACTORS_FILE, worker_need
    from orchestrator.model.datasets import build_data
    from orchestrator.model.loading import model_facts
    from orchestrator.model.scoring import ScoringSetup
    from orchestrator.model.worker import Worker
    from orchestrator.search.capacity import workload_of

    cfg = sweep_config(args)
    facts = model_facts(cfg.model.source)
    load = workload_of(cfg, facts)
    need = worker_need(load)
    data = build_data(cfg)
    cache_bytes = int(cfg.search.reference_cache_gib * (1 << 30))
    t0 = time.perf_counter()
    w = Worker(cfg.model)
    seconds = {"load": time.perf_counter() - t0}
    copied: dict[str, bool] = {}
    for method in (m for m in ("gradient", "kl_div") if m in args.phases):
        setup = ScoringSetup(
            cfg.model.source,
            None,
            w._profile.name if w._profile else "",
            data.score.hash,
            method,
            RECIPE,
            cfg.scoring.num_calib_steps,
            args.score_batches,
            cfg.scoring.reuse_prefix,
        )
        t0 = time.perf_counter()
        w.score(data, setup, list(range(args.score_batches)))
        copied[method] = bool(w.scored_on_copy)
        seconds[method] = time.perf_counter() - t0
    if "calibration" in args.phases or "trials" in args.phases:
        t0 = time.perf_counter()
        w.prepare(data, RECIPE, cache_bytes)
        seconds["calibration_and_reference"] = time.perf_counter() - t0
        ev = w._evaluator
        assert ev is not None
        if "trials" in args.phases:
            t0 = time.perf_counter()
            for modules in (ev.eligible, []):  # all FP8, then none
                w.evaluate(data, RECIPE, cache_bytes, modules)
            seconds["trials"] = time.perf_counter() - t0
    measured = w.memory()["phases"]
    plan = need.phase_gib
    shapes = load.shapes()
    phases: dict[str, Any] = {}
    rows = []
    card = torch.cuda.get_device_name(0) if w.device.startswith("cuda") else "cpu"
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    for name, peaks in measured.items():
        shape = shapes[name]
        on_copy = copied.get(name, False)
        held = shape.held_gib + (load.weights_gib if on_copy else 0.0)
        promised = plan[name] + (load.weights_gib if on_copy else 0.0)
        top = max((v for v in peaks.values() if v is not None), default=None)
        phases[name] = {
            **peaks,
            "plan_gib": round(promised, 3),
            "plan_over_peak": None if top is None else round(promised / top, 3),
            "on_copy": on_copy,
            "seconds": round(seconds.get(name, seconds.get("calibration_and_reference", 0.0)), 2),
        }
        if top is None:
            continue
        rows.append(
            {
                "phase": name,
                "preset": cfg.model.source,
                "card": card,
                "date": date,
                "source": f"scripts/bench_memory.py -> {args.out.name}",
                "note": "on a copy of the loaded model" if on_copy else "",
                "weights_gib": round(load.weights_gib, 4),
                "held_gib": round(held, 4),
                "tokens": shape.tokens,
                "blocks": shape.blocks,
                "width": shape.width,
                "vocab": shape.vocab,
                "logit_rows": shape.logit_rows,
                **peaks,
            }
        )
    return {
        "what": "peak memory per worker phase against the memory plan (scripts/bench_memory.py)",
        "date": date,
        "card": card,
        "versions": versions(),
        "preset": cfg.model.source,
        "data": {k: getattr(cfg.data, k) for k in ("batch_size", "seq_len", "calib_batches")}
        | {
            "score_batches": args.score_batches,
            "eval_batches": cfg.data.eval_batches,
            "report_batches": cfg.data.report_batches,
        },
        "plan": {**need.as_dict(), "factors_file": str(FACTORS_FILE.relative_to(ROOT))},
        "phases": phases,
        "rows": rows,
    }


def record(path: Path, rows: list[dict[str, Any]]) -> None:
    doc = json.loads(path.read_text())
    doc["rows"] = [*doc["rows"], *rows]
    path.write_text(json.dumps(doc, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_ is not None:
        rows = json.loads(args.from_.read_text())["rows"]
        record(args.record, rows)
        print(f"{len(rows)} row(s) of {args.from_} added to {args.record}")
        return 0
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, p in result["phases"].items():
        print(
            f"{name:12s} allocated {p['allocated_gib']} reserved {p['reserved_gib']} "
            f"device {p['device_used_gib']} GiB; plan {p['plan_gib']} GiB"
        )
    if args.record is not None:
        if result["rows"]:
            record(args.record, result["rows"])
            print(f"{len(result['rows'])} row(s) added to {args.record}")
        else:
            print(f"no row added to {args.record}: nothing was measured on {result['card']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
