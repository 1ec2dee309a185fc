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

import sys
from collections.abc import Sequence
from pathlib import Path

from orchestrator import cli
from orchestrator.core.config import ConfigError, load_catalog, read_written_config
from orchestrator.core.objectives import OBJECTIVES, Objective, missing_rows
from orchestrator.outputs.files import read_sweep_json
from orchestrator.outputs.ownership import acquire, check_free
from orchestrator.outputs.publish import SweepFacts, finalize
from orchestrator.outputs.summary import summary_lines
from orchestrator.outputs.tables import CorruptTable, load_results, read_score_tables
from orchestrator.runtime.logs import setup_logging

IN_USE_ADVICE = "run select when it has finished, or stop it"


@cli.command  # bad input, the folder in use included: one line on stderr, exit 2
def main(argv: Sequence[str] | None = None) -> int:
    p = cli.Parser("orchestrator.select", __doc__)
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
    setup_logging()
    output = args.output.resolve()
    check_free(output, IN_USE_ADVICE)
    sweep = read_sweep_json(output)
    if sweep is None or not (output / "trials.parquet").exists():
        raise ConfigError(f"--output {output}: no finished sweep (sweep.json, trials.parquet)")
    cfg = read_written_config(output / "config.yaml")
    catalog = load_catalog(args.catalog or cfg.selection.catalog)
    if args.max_kl is not None and not args.max_kl > 0:
        raise ConfigError(f"--max-kl={args.max_kl}: must be > 0")
    objective = Objective(args.objective or cfg.selection.objective)
    try:
        results = load_results(output)
        tables = read_score_tables(output)
    except CorruptTable as e:  # damaged since the sweep wrote it (it writes atomically)
        raise ConfigError(
            f"--output {output}: {e}; run the sweep again with the same command (it resumes "
            "and rewrites its tables), or restore the file from a copy"
        ) from None
    has_rows = any(objective.per_sequence(r.per_sequence) for r in results)
    problem = missing_rows(objective, "--objective", has_rows)
    if problem:
        raise ConfigError(problem)
    owned = acquire(output, IN_USE_ADVICE)  # no sweep starts here while the files change
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
            tables,
            catalog,
            max_kl,
            header,
            SweepFacts.of(cfg, sweep.get("data_hashes") or {}),
            replace_on_error=False,
            objective=objective,
        )
    if done.error:
        print(f"error: {done.error}", file=sys.stderr)
        return cli.ExitCode.NO_FRONT
    for line in summary_lines(done, output):
        print(line)
    return cli.ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
