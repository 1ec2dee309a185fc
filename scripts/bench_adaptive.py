"""How many score batches the plans need: plan changes against batches, and where the adaptive
scoring budget (``orchestrator/core/budget.py``) stops, for each scoring method.

    python scripts/bench_adaptive.py --out benchmarks/results/<date>-cpu-adaptive.json
    python scripts/bench_adaptive.py --config search_spaces/qwen2_5_vl_3b_fp8.yaml \\
        --set model.source=qwen2.5-vl-3b-random --batches 32 --out ...          # on a GPU
    python scripts/bench_adaptive.py --smoke --out /tmp/adaptive.json            # seconds, CPU

Each score batch is scored on its own (one AutoQuantize call per batch, each calibrating the same
way, as the sweep's shards do), so the sums over the first k batches are the scores a budget of k
batches gives, for every k up to ``--batches``. For every k the script solves the plan of every
grid point of the config's search space and compares the plans with k - 1's and with the full
budget's: how many differ, and the worst regret (``orchestrator/core/budget.regret``: how much
worse the k-batch plan is than the full budget's, on the full budget's sums). It then replays each
rule of ``--rules`` (chunk x patience @ tolerance) on those sums: where it stops, how many of its
grid plans differ from the full budget's (0: the trials, and so the three schemes, are the full
budget's), their worst regret, and its share of the full budget's forwards (a batch costs the
same forwards whichever chunk it falls in; each chunk calibrates once more).

A kl_div score batch runs one forward per group plus the reference; a gradient batch one forward
and one backward. ``--batches`` must not exceed the config's ``data.score_batches`` (the script
sets it).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a file from anywhere: this checkout's orchestrator
DEFAULT_CONFIG = ROOT / "search_spaces" / "demo_tiny.yaml"
DEFAULT_RULES = "4x2,4x2@0.005,4x2@0.01,4x2@0.02,4x2@0.05,4x1@0.01,4x3@0.01,2x2@0.01,8x1@0.01"
SMOKE_SETS = [
    "model.source=tiny-qwen2.5-vl",
    "data.source=synthetic",
    "data.seq_len=32",
    "data.batch_size=2",
    "data.report_batches=1",
    "search.effective_bits=[8,12,14]",
    "search.coverage=[1.0]",
    "search.strategies=[solve]",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("--set", action="append", default=[], help="config override, key=value")
    p.add_argument("--batches", type=int, default=32, help="the full budget (default 32)")
    p.add_argument("--methods", default="gradient,kl_div")
    p.add_argument(
        "--rules", default=DEFAULT_RULES, help="CHUNKxPATIENCE[@TOLERANCE], comma-separated"
    )
    p.add_argument("--device", default=None, help="default: cuda if there is one, else cpu")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--parts", type=Path, help="keep the per-batch scores here (JSON) and read them back"
    )
    p.add_argument("--smoke", action="store_true", help="tiny random preset, 6 batches, 2 rules")
    args = p.parse_args(argv)
    if args.smoke:
        args.set = SMOKE_SETS + args.set
        args.batches, args.rules = 6, "2x1,2x2,1x2@0.05"
    return args


def per_batch_parts(
    model: Any, profile: Any, data: Any, setup: Any, device: str, kept: Any = None
) -> list[Any]:
    """(table, state, seconds) of each score batch on its own, from a fresh copy of ``model``;
    ``kept`` (a callable) gets the parts so far after every batch, and a list of them returned
    by it earlier is continued, not redone."""
    from orchestrator.model.scoring import score_shard

    parts = list(kept() or []) if kept else []
    for i in range(len(parts), setup.num_score_steps):
        net = copy.deepcopy(model)
        t0 = time.perf_counter()
        table, state = score_shard(net, profile, data, setup, [i], device)
        parts.append((table, state, time.perf_counter() - t0))
        del net
        if kept:
            kept(parts)
    return parts


def keeper(folder: Path, method: str, key: str) -> Any:
    """Reads (no argument) or writes (the parts so far) one method's per-batch parts as JSON."""
    from orchestrator.core.records import ScoreTable

    path = folder / f"{method}-{key}.json"

    def kept(parts: list[Any] | None = None) -> list[Any] | None:
        if parts is None:
            if not path.exists():
                return None
            doc = json.loads(path.read_text())
            return [(ScoreTable.from_dict(t), st, sec) for t, st, sec in doc]
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([(t.to_dict(), st, sec) for t, st, sec in parts]))
        return parts

    return kept


def plan_curve(parts: list[Any], plans: Any) -> tuple[list[Any], list[dict[str, float]]]:
    """The grid's plans (FP8 groups per point) on the sums of the first k batches, and those
    sums per group, for k = 1 .. len(parts)."""
    from orchestrator.core.budget import group_scores
    from orchestrator.model.scoring import merge_shards

    tables = [merge_shards([(t, s) for t, s, _ in parts[:k]])[0] for k in range(1, 1 + len(parts))]
    return [tuple(plans(t)) for t in tables], [group_scores(t) for t in tables]


def replay(
    rule: Any, curve: list[Any], scores: list[dict[str, float]]
) -> tuple[int, int, list[int]]:
    """(batches used, chunks, plan changes per chunk) of ``rule`` on the per-k plans and sums:
    the sweep's own record (``budget.Watch``), fed the plans of every chunk, off rules included."""
    from orchestrator.core.budget import Watch

    watch = Watch(rule)
    for n, chunk in enumerate(rule.chunks(), start=1):
        k = watch.used + len(chunk)
        if watch.observe(len(chunk), curve[k - 1], scores[k - 1]) is not None:
            return watch.used, n, watch.changes
    return watch.used, len(rule.chunks()), watch.changes


def parse_rule(spec: str, maximum: int) -> Any:
    from orchestrator.core.budget import BudgetRule

    sizes, _, tolerance = spec.partition("@")
    chunk, patience = (int(x) for x in sizes.split("x"))
    return BudgetRule(maximum, chunk, patience, float(tolerance or 0))


def forwards_per_batch(method: str, groups: int) -> int:
    return groups + 1 if method == "kl_div" else 2  # kl_div: reference + one per group


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    from orchestrator.core.budget import changed, worst_regret
    from orchestrator.core.config import load_config
    from orchestrator.core.points import grid_plans
    from orchestrator.model.datasets import build_data
    from orchestrator.model.loading import load_model
    from orchestrator.model.scoring import ScoringSetup
    from orchestrator.runtime.host import library_versions

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = load_config(args.config, [*args.set, f"data.score_batches={args.batches}"])
    data = build_data(cfg, quiet=True)
    m = cfg.model
    model, profile = load_model(m.source, device, m.dtype, m.revision, m.trust_remote_code)
    calib = cfg.scoring.num_calib_steps

    def plans(table: Any) -> list[Any]:
        return list(grid_plans(cfg.search, table))

    methods: dict[str, Any] = {}
    for method in args.methods.split(","):
        setup = ScoringSetup(
            m.source, m.revision, profile.name, data.score.hash, method,
            cfg.scoring.fp8_recipes[0], calib, args.batches, cfg.scoring.reuse_prefix,
        )  # fmt: skip
        t0 = time.perf_counter()
        kept = keeper(args.parts, method, setup.key()) if args.parts else None
        parts = per_batch_parts(model, profile, data.score, setup, device, kept)
        curve, scores = plan_curve(parts, plans)
        full, final = curve[-1], scores[-1]
        groups = len(parts[0][0].groups)
        fpb = forwards_per_batch(method, groups)
        full_forwards = args.batches * fpb + calib
        rules = {}
        for spec in args.rules.split(","):
            rule = parse_rule(spec, args.batches)
            used, chunks, changes = replay(rule, curve, scores)
            rules[spec] = {
                "on": rule.on,
                "batches_used": used,
                "chunks": chunks,
                "plan_changes_per_chunk": changes,
                "plans_differing_from_full": changed(curve[used - 1], full, final),
                # the stopping plans on the full budget's sums: how much worse than its own plans
                "worst_regret_on_full_scores": worst_regret(curve[used - 1], full, final),
                "forwards_share": (used * fpb + chunks * calib) / full_forwards,
            }
        methods[method] = {
            "groups": groups,
            "grid_points": len(full),
            "distinct_plans_full": len(set(full)),
            "forwards_per_batch": fpb,
            "seconds_per_batch_call": [round(s, 3) for _, _, s in parts],
            "seconds": time.perf_counter() - t0,
            # k = 1 .. batches: against k - 1 (all plans at k = 1) and against the full budget:
            # plans that differ, and the most weight one plan moved
            "changed_since_previous": [
                changed(curve[k - 1] if k else None, curve[k], scores[k]) for k in range(len(curve))
            ],
            "worst_regret_since_previous": [
                worst_regret(curve[k - 1] if k else None, curve[k], scores[k])
                for k in range(len(curve))
            ],
            "differ_from_full": [changed(c, full, final) for c in curve],
            "worst_regret_on_full_scores": [worst_regret(c, full, final) for c in curve],
            "rules": rules,
        }
        print(f"{method}: {groups} groups, {len(full)} grid points, {len(set(full))} plans")
        for spec, r in rules.items():
            print(
                f"  rule {spec}: stops at {r['batches_used']}/{args.batches} batches, "
                f"{r['plans_differing_from_full']} plan(s) differ from the full budget "
                f"(worst {100 * r['worst_regret_on_full_scores']:.2g}% on its scores), "
                f"{100 * r['forwards_share']:.0f}% of its forwards"
            )
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {
            "device": device,
            "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
            "cpu_threads": torch.get_num_threads(),
            "platform": platform.platform(),
        },
        "versions": {"python": platform.python_version(), **library_versions()},
        "config": str(args.config),
        "sets": args.set,
        "model": m.source,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "batches": args.batches,
        "batch_tokens": cfg.data.batch_size * cfg.data.seq_len,
        "num_calib_steps": calib,
        "methods": methods,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
