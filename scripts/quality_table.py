"""Print the markdown quality table of a finished sweep (docs/SCHEMES.md quotes one).

    python scripts/quality_table.py runs/demo-tiny

One row per effective-bits budget at coverage 1.0: KL and top-1 agreement of the plan each scoring
method gives, and of every baseline at the same budget (random: mean ± spread over its seeds), plus
what each scoring run cost.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from orchestrator.outputs import load_results, read_score_tables


def main(output: Path) -> None:
    rows = [r for r in load_results(output) if r.status == "FINISHED" and r.coverage == 1.0]
    cells: dict[float, dict[str, list[tuple[float, float, float]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for r in rows:
        name = r.baseline.split(":")[0] if r.kind == "baseline" else f"AutoQuantize {r.method}"
        cells[r.effective_bits][name].append(
            (r.metrics["kl_mean"], r.metrics.get("top1_agreement", np.nan), r.fp8_fraction)
        )
    cols = sorted(
        {c for v in cells.values() for c in v}, key=lambda c: (not c.startswith("Auto"), c)
    )
    print("| budget (bits) | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for bits in sorted(cells, reverse=True):
        out = []
        for c in cols:
            vals = cells[bits].get(c)
            if not vals:
                out.append("")
                continue
            kl = np.array([v[0] for v in vals])
            top1 = np.mean([v[1] for v in vals])
            share = np.mean([v[2] for v in vals])
            spread = f" ± {kl.std():.2g}" if len(vals) > 1 else ""
            out.append(f"{kl.mean():.3g}{spread} / {top1:.4f} ({share:.0%})")
        print(f"| {bits:g} | " + " | ".join(out) + " |")
    print()
    for t in read_score_tables(output).values():
        print(
            f"- scoring `{t.method}` ({t.meta.get('num_score_steps')} score batches): "
            f"{t.meta.get('seconds', float('nan')):.1f} s"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
