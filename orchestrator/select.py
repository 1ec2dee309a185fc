"""``python -m orchestrator.select --output DIR``: re-run selection on a finished sweep, no GPU.

    python -m orchestrator.select --output runs/demo-tiny
    python -m orchestrator.select --output runs/demo-tiny --max-kl 1e-4
    python -m orchestrator.select --output runs/demo-tiny --set selection.max_kl=1e-4   # the same
    python -m orchestrator.select --output runs/demo-mm --objective image_kl_mean

Reads ``trials.parquet``, the score tables under ``scores/`` and the sweep's ``config.yaml``
(each checked against the sha256 the sweep recorded in ``sweep.json``: a changed one is refused,
exit 2) and rewrites ``schemes.yaml``, ``plans/``, ``pareto.png`` and ``sensitivity.png``. The
paired comparisons reuse the controls the sweep measured (ModelOpt's own plans from what the sweep
stored in ``scores/``, so no ModelOpt is needed here); a scheme that moved to another share
(another catalog, cap or objective) reads ``not measured`` against them until the sweep is run
again.
``--set`` takes the sweep's ``selection`` keys; ``--max-kl``, ``--objective`` and ``--catalog``
spell ``selection.max_kl``, ``selection.objective`` and ``selection.catalog``. It takes the folder
like a sweep driver does (``outputs/ownership.py``): while the folder's sweep runs, its driver owns
those files, and select exits 2 naming it and rewrites nothing; while select rewrites, a sweep
started on the folder refuses. Exit 0, 2 (bad input, or the sweep is running), 3 (a name no
measured point can carry; then nothing is rewritten) or 4 (rewritten, but the sweep has trials
that failed: one line names their plans, ``schemes.yaml`` lists them; rerun the sweep).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from orchestrator import cli
from orchestrator.core.config import (
    ConfigError,
    Override,
    load_catalog,
    override_config,
    read_written_config,
)
from orchestrator.core.missing import missing_entries, missing_line
from orchestrator.core.objectives import OBJECTIVES, Objective, missing_rows
from orchestrator.core.selection import CapAdvice
from orchestrator.outputs import integrity
from orchestrator.outputs.files import read_sweep_json
from orchestrator.outputs.ownership import acquire, check_free
from orchestrator.outputs.publish import SweepFacts, finalize
from orchestrator.outputs.summary import closing_lines, summary_lines
from orchestrator.outputs.tables import CorruptTable, load_results, read_score_tables
from orchestrator.runtime.logs import setup_logging

IN_USE_ADVICE = "run select when it has finished, or stop it"
RERUN_THE_SWEEP = "run the sweep's command on this --output again to retry them"


def parser() -> cli.Parser:
    p = cli.Parser(
        "orchestrator.select",
        __doc__,
        output="a finished sweep's output folder",
        set_keys=SET_KEYS,
        verbose="show what the libraries print",
    )
    p.add_argument(
        "--max-kl", type=float, default=None, help="cap on mean KL (= --set selection.max_kl)"
    )
    p.add_argument(
        "--catalog", type=Path, default=None, help="scheme catalog (= --set selection.catalog)"
    )
    p.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default=None,
        help="the KL to select on: all target tokens, or image answers "
        "(= --set selection.objective)",
    )
    return p


# the keys --set takes here (the sweep's selection section), each with an example value
SET_KEYS = {
    "selection.max_kl": "1e-4",
    "selection.objective": "image_kl_mean",
    "selection.catalog": "search_spaces/schemes.yaml",
}


@cli.command  # bad input, the folder in use included: one line on stderr, exit 2
def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.output is None:
        p.error("the following arguments are required: --output")
    given = p.overrides(args, max_kl=args.max_kl, objective=args.objective, catalog=args.catalog)
    setup_logging(args.verbose)
    output = args.output.resolve()
    check_free(output, IN_USE_ADVICE)
    sweep = read_sweep_json(output)
    if sweep is None or not (output / "trials.parquet").exists():
        raise ConfigError(f"--output {output}: no finished sweep (sweep.json, trials.parquet)")
    scores = [f"scores/{p.name}" for p in sorted((output / "scores").glob("*.parquet"))]
    integrity.refuse_changed(output, sweep, ["config.yaml", "trials.parquet", *scores])
    written = output / "config.yaml"
    cfg = override_config(read_written_config(written), given, str(written))
    catalog = load_catalog(cfg.selection.catalog)
    objective = Objective(cfg.selection.objective)
    try:
        results = load_results(output)
        tables = read_score_tables(output)
    except CorruptTable as e:  # damaged since the sweep wrote it (it writes atomically)
        raise ConfigError(
            f"--output {output}: {e}; run the sweep again with the same command (it resumes "
            "and rewrites its tables), or restore the file from a copy"
        ) from None
    has_rows = any(objective.per_sequence(r.per_sequence) for r in results)
    set_by = next((o.flag for o in given if o.key == "selection.objective"), None)
    problem = missing_rows(objective, set_by or "selection.objective", has_rows)
    if problem:
        raise ConfigError(problem)
    owned = acquire(output, IN_USE_ADVICE)  # no sweep starts here while the files change
    header = {
        "sweep": cfg.name,
        "config_hash": sweep.get("config_hash"),
        "seed": cfg.seed,
        "parent_run_id": sweep.get("parent_run_id"),
    }
    if missing_entries(results):
        header["missing_plans"] = missing_entries(results)
    with owned:
        done = finalize(
            output,
            results,
            tables,
            catalog,
            cfg.selection.max_kl,
            header,
            SweepFacts.of(cfg, sweep.get("data_hashes") or {}),
            replace_on_error=False,
            objective=objective,
            cap_advice=_cap_advice(given, output),
        )
        if not done.error:
            integrity.record(output, integrity.published(done.entries, done.knee))
    if done.error:
        print(f"error: {done.error}", file=sys.stderr)
        return cli.ExitCode.NO_FRONT
    for line in summary_lines(done, output) + closing_lines(done, output, None):
        print(line)
    gone = missing_line(results, RERUN_THE_SWEEP)
    if gone:
        print(f"error: {gone}", file=sys.stderr)
        return cli.ExitCode.MISSING_TRIALS
    return cli.ExitCode.OK


def _cap_advice(given: Sequence[Override], output: Path) -> CapAdvice:
    """The cap named as the user set it (else as the sweep's config has it), and relaxed with
    the flag they used, for exit 3's advice."""
    flag = next((o.given for o in given if o.key == "selection.max_kl"), None)
    if flag is not None and flag.startswith("--set"):
        return CapAdvice(flag, "--set selection.max_kl=<higher>")
    written = f"selection.max_kl in {output / 'config.yaml'}"
    return CapAdvice(flag or written, "--max-kl <higher>")


if __name__ == "__main__":
    sys.exit(main())
