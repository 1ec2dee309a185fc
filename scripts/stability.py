"""Run one sweep k times on other calibration, scoring and selection text: how stable the names are.

    python -m scripts.stability --output runs/stability                      # the demo, k = 3
    python -m scripts.stability --output runs/stability --runs 5 --config C  # any sweep config
    python -m scripts.stability --output runs/stability --doc docs/SCHEMES.md  # + the doc's table

Run i is ``python -m orchestrator.sweep --config C --output <output>/draw-<i> --set data.draw=i``
(plus every ``--set`` given here): the same sweep, with calibration, scoring and selection windows
drawn afresh from the source's other documents, and the same report set, so every KL is measured
on the same documents (``orchestrator/model/data.py``). A run folder that already holds a
schemes.yaml is read, not run again. Then, per name published by every run
(``orchestrator/core/stability.py``): each run's FP8 share, the Jaccard overlap of the module sets
over every pair of runs, how many runs chose the first run's exact plan, and the report-set KL's
lowest, highest and relative spread. Written to ``<output>/stability.json`` and printed; with
``--doc``, the table between ``<!-- generated: stability ... -->`` and ``<!-- end generated -->``
is rewritten (the other generated tables are ``scripts/schemes_doc.py``'s).

Exit: 0 done; 1 a sweep failed (its log is ``<output>/draw-<i>.log``); 2 bad input (checked
before any sweep runs), nothing written.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from orchestrator.cli import ExitCode, Parser, command
from orchestrator.core.config import DEMO_CONFIG, ConfigError, load_config, parse_overrides
from orchestrator.core.stability import NameStability, Published, stability
from scripts.schemes_doc import TABLES, MarkerError, splice

ROOT = Path(__file__).resolve().parent.parent
NAME = "stability"


def published(run: Path) -> dict[str, Published]:
    """A finished run's schemes: modules (its plans/ file), FP8 share, KL on the report set."""
    doc = yaml.safe_load((run / "schemes.yaml").read_text())
    out = {}
    for s in doc.get("schemes") or ():
        plan = json.loads((run / s["modules"]).read_text())
        out[s["name"]] = Published(
            frozenset(plan["fp8_modules"]), float(s["fp8_fraction"]), float(s["metrics"]["kl_mean"])
        )
    return out


def metrics_set(run: Path) -> str:
    doc = yaml.safe_load((run / "schemes.yaml").read_text())
    schemes = doc.get("schemes") or [{}]
    return str(schemes[0].get("metrics_set", "selection"))


def table(rows: Sequence[NameStability], runs: int, config: str, measured_on: str) -> list[str]:
    head = (
        f"_{runs} runs of `{config}`, each on its own draw of calibration, scoring and selection "
        f"text (`data.draw` 0-{runs - 1}); KL on the {measured_on} set, the same in every run._"
    )
    lines = [
        head,
        "",
        "| name | FP8 share per run | Jaccard mean (min) | runs with run 0's plan "
        "| KL mean [lowest, highest] | spread |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        shares = " / ".join(f"{x:.1%}" for x in r.fp8_fractions)
        lines.append(
            f"| `{r.name}` | {shares} | {r.jaccard_mean:.3f} ({r.jaccard_min:.3f}) "
            f"| {r.same_plan_runs} of {r.runs} | {r.kl_mean:.3g} [{r.kl_min:.3g}, {r.kl_max:.3g}] "
            f"| {r.kl_spread:.1%} |"
        )
    return lines


def _run(config: Path, out: Path, draw: int, sets: Sequence[str]) -> tuple[int, float]:
    args = ["--config", str(config), "--output", str(out), "--set", f"data.draw={draw}"]
    for s in sets:
        args += ["--set", s]
    started = time.monotonic()
    with open(out.with_name(f"{out.name}.log"), "w") as log:
        rc = subprocess.run(
            [sys.executable, "-m", "orchestrator.sweep", *args],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        ).returncode
    return rc, time.monotonic() - started


@command
def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(
        "scripts.stability",
        __doc__,
        output="the folder for the k runs (draw-0, draw-1, ...) and stability.json",
    )
    parser.add_argument("--config", type=Path, default=DEMO_CONFIG, help="the sweep config")
    parser.add_argument("--runs", type=int, default=3, help="k, the number of runs (2 to 20)")
    parser.add_argument("--doc", type=Path, help="a markdown file whose stability table to rewrite")
    args = parser.parse_args(argv)
    sets = list(args.set)  # handed to every run as given
    if args.output is None:
        raise ConfigError("--output: missing; give the folder for the runs")
    if not 2 <= args.runs <= 20:
        raise ConfigError(f"--runs={args.runs}: use 2 to 20")
    if any(o.key == "data.draw" for o in parse_overrides(args.set)):
        raise ConfigError("--set data.draw: this script sets it (0 to --runs - 1); leave it out")
    if args.doc is not None and not args.doc.is_file():
        raise ConfigError(f"--doc {args.doc}: no such file; give the markdown file to rewrite")
    cfg = load_config(args.config, args.set)  # bad config or --set: exit 2 before any run
    results: list[Mapping[str, Published]] = []
    for i in range(args.runs):
        out = args.output / f"draw-{i}"
        if not (out / "schemes.yaml").is_file():
            out.parent.mkdir(parents=True, exist_ok=True)
            rc, wall = _run(args.config, out, i, sets)
            print(f"run {i + 1}/{args.runs} (data.draw={i}): exit {rc} in {wall:.0f}s -> {out}")
            if rc != 0:
                print(f"error: the sweep failed; see {out.with_name(out.name + '.log')}")
                return ExitCode.ERROR
        else:
            print(f"run {i + 1}/{args.runs}: {out} is finished; read, not run again")
        results.append(published(out))
    rows = stability(results)
    missing = sorted({n for r in results for n in r} - {r.name for r in rows})
    doc: dict[str, Any] = {
        "config": str(args.config),
        "name": cfg.name,
        "runs": args.runs,
        "measured_on": metrics_set(args.output / "draw-0"),
        "names": [r.to_dict() for r in rows],
        "not_published_by_every_run": missing,
    }
    (args.output / "stability.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = table(rows, args.runs, str(args.config.name), doc["measured_on"])
    print("\n".join(lines))
    if missing:
        print(f"not published by every run: {', '.join(missing)}")
    if args.doc is not None:
        block = f"<!-- generated: {NAME} (from {args.output}) -->\n" + "\n".join(lines)
        text = args.doc.read_text()
        try:
            new, changed = splice(text, {NAME: block}, tuple(TABLES))
        except MarkerError as e:
            raise ConfigError(f"--doc {args.doc}: {e}") from e
        args.doc.write_text(new)
        print(f"{args.doc}: rewrote {', '.join(changed) or 'nothing (up to date)'}")
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
