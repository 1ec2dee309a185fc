"""``python -m orchestrator.select --output DIR``: re-run selection on a finished sweep, no GPU.

Reads ``trials.parquet``, the score tables under ``scores/`` and the sweep's ``config.yaml`` and
rewrites ``schemes.yaml``, ``plans/``, ``pareto.png`` and ``sensitivity.png``. The paired
comparisons reuse the controls the sweep measured; a scheme that moved to another share (a new
``--catalog``, ``--max-kl`` or ``--objective``) reads ``not measured`` against them until the sweep
is run again. ``--max-kl``, ``--catalog`` and ``--objective`` override the sweep's selection
settings. It takes the folder like a sweep driver does (``outputs/ownership.py``): while the
folder's sweep runs, its driver owns those files, and select exits 2 naming it and rewrites nothing;
while select rewrites, a sweep started on the folder refuses. Exit 0, 2 (bad input, or the sweep is
running) or 3 (a name no measured point can carry; then nothing is rewritten).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from orchestrator.core.config import ConfigError, load_catalog, read_written_config
from orchestrator.core.objectives import OBJECTIVES, Objective
from orchestrator.outputs.files import read_sweep_json
from orchestrator.outputs.ownership import OutputInUse, acquire, check_free
from orchestrator.outputs.publish import SweepFacts, finalize
from orchestrator.outputs.summary import summary_lines
from orchestrator.outputs.tables import load_results, read_score_tables

IN_USE_ADVICE = "run select when it has finished, or stop it"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m orchestrator.select", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--output", type=Path, required=True, help="a finished sweep's output folder")
    p.add_argument("--max-kl", type=float, default=None, help="cap on mean KL (overrides config)")
    p.add_argument("--catalog", type=Path, default=None, help="scheme catalog (overrides config)")
    p.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default=None,
        help="the KL to select on: over all target tokens, or image answers (overrides config)",
    )
    args = p.parse_args(argv)
    output = args.output.resolve()
    try:
        check_free(output, IN_USE_ADVICE)
        sweep = read_sweep_json(output)
        if sweep is None or not (output / "trials.parquet").exists():
            raise ConfigError(f"--output {output}: no finished sweep (sweep.json, trials.parquet)")
        cfg = read_written_config(output / "config.yaml")
        catalog = load_catalog(args.catalog or cfg.selection.catalog)
        if args.max_kl is not None and not args.max_kl > 0:
            raise ConfigError(f"--max-kl={args.max_kl}: must be > 0")
        objective = Objective(args.objective or cfg.selection.objective)
        results = load_results(output)
        if objective.prefix and not any(objective.per_sequence(r.per_sequence) for r in results):
            raise ConfigError(
                f"--objective={objective.metric}: this sweep's evaluation set has no image+text "
                "rows (data.eval_image_fraction); use kl_mean"
            )
        owned = acquire(output, IN_USE_ADVICE)  # no sweep starts here while the files change
    except (ConfigError, OutputInUse) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    header = {
        "sweep": cfg.name,
        "config_hash": sweep.get("config_hash"),
        "seed": cfg.seed,
        "parent_run_id": sweep.get("parent_run_id"),
    }
    max_kl = args.max_kl if args.max_kl is not None else cfg.selection.max_kl
    with owned:
        done = finalize(
            output,
            results,
            read_score_tables(output),
            catalog,
            max_kl,
            header,
            SweepFacts.of(cfg, sweep.get("data_hashes") or {}),
            replace_on_error=False,
            objective=objective,
        )
    if done.error:
        print(f"error: {done.error}", file=sys.stderr)
        return 3
    for line in summary_lines(done, output):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
