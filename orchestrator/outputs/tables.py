"""Parquet files of the sweep: the score table (with ModelOpt's search state in its metadata) and
the per-trial table. pyarrow only, so selection can read a finished sweep without torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator.core.records import ScoreTable, TrialResult
from orchestrator.outputs.files import atomic_path

_TABLE_META = b"orchestrator.score_table"
_STATE_META = b"orchestrator.search_state"


class CorruptTable(ValueError):
    """A Parquet file that is truncated, unreadable or holds another key than expected."""


def _write_table(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_scores(
    scores: ScoreTable, path: Path, search_state: Mapping[str, Any] | None = None
) -> None:
    """One row per group; table-level fields and the search state travel in the file metadata."""
    rows = {
        "group": [g.name for g in scores.groups],
        "block": [g.block for g in scores.groups],
        "kind": [g.kind for g in scores.groups],
        "params": [g.params for g in scores.groups],
        "score": [g.score for g in scores.groups],
        "modules": [list(g.modules) for g in scores.groups],
    }
    head = {k: v for k, v in scores.to_dict().items() if k != "groups"}
    meta = {_TABLE_META: json.dumps(head).encode()}
    if search_state is not None:
        meta[_STATE_META] = json.dumps(search_state).encode()
    table = pa.table(rows).replace_schema_metadata(meta)
    _write_table(table, path)


def read_scores(path: Path, expect_key: str | None = None) -> ScoreTable:
    try:
        table = pq.read_table(path)
        head = json.loads(table.schema.metadata[_TABLE_META])
    except (OSError, pa.ArrowException, KeyError, TypeError, ValueError) as e:
        raise CorruptTable(f"{path}: not a readable score table ({e.__class__.__name__})") from e
    if expect_key is not None and head.get("key") != expect_key:
        raise CorruptTable(f"{path}: holds key {head.get('key')!r}, expected {expect_key!r}")
    cols = table.to_pydict()
    groups = [
        {
            "name": cols["group"][i],
            "modules": cols["modules"][i],
            "block": cols["block"][i],
            "kind": cols["kind"][i],
            "params": cols["params"][i],
            "score": cols["score"][i],
        }
        for i in range(table.num_rows)
    ]
    if not groups:
        raise CorruptTable(f"{path}: score table has no groups")
    return ScoreTable.from_dict({**head, "groups": groups})


def read_search_state(path: Path) -> dict[str, Any]:
    meta = pq.read_schema(path).metadata or {}
    if _STATE_META not in meta:
        raise CorruptTable(f"{path}: no search state stored")
    return dict(json.loads(meta[_STATE_META]))


_FIXED = (
    "kind",
    "strategy",
    "control",
    "plan_hash",
    "method",
    "fp8_recipe",
    "effective_bits",
    "coverage",
    "achieved_bits",
    "fp8_fraction",
    "status",
    "mlflow_run_id",
    "error",
    "numerics",
)
_SEQ_PREFIX = "seq_"  # per-sequence sums as list columns: seq_kl, seq_agree, seq_tokens


def write_trials(results: Sequence[TrialResult], path: Path) -> None:
    """One row per trial: knobs, plan hash, status, every metric as its own column, error text,
    the numerics it ran in (``numerics``), and the per-sequence sums (``seq_kl``, ``seq_agree``,
    ``seq_tokens``) as list columns."""
    metric_names = sorted({k for r in results for k in r.metrics} - set(_FIXED))
    seq_names = sorted({k for r in results for k in r.per_sequence})
    rows: dict[str, list[Any]] = {k: [] for k in _FIXED}
    for m in metric_names:
        rows[m] = []
    for r in results:
        d = r.to_dict()
        for k in _FIXED:
            rows[k].append(d[k])
        for m in metric_names:
            rows[m].append(r.metrics.get(m))
    for k in seq_names:
        rows[_SEQ_PREFIX + k] = [list(r.per_sequence.get(k, ())) for r in results]
    _write_table(pa.table(rows), path)


def read_trials(path: Path) -> list[TrialResult]:
    try:
        cols = pq.read_table(path).to_pydict()
    except (OSError, pa.ArrowException) as e:
        raise CorruptTable(f"{path}: not a readable trials table ({e.__class__.__name__})") from e
    if "plan_hash" not in cols:
        raise CorruptTable(f"{path}: not a trials table (no plan_hash column)")
    fixed = [k for k in _FIXED if k in cols]
    seq = [k for k in cols if k.startswith(_SEQ_PREFIX)]
    metric_names = [k for k in cols if k not in fixed and k not in seq]
    out = []
    for i in range(len(cols["plan_hash"])):
        base = {k: cols[k][i] for k in fixed}
        metrics = {m: cols[m][i] for m in metric_names if cols[m][i] is not None}
        per_seq = {k[len(_SEQ_PREFIX) :]: cols[k][i] for k in seq if cols[k][i]}
        out.append(TrialResult.from_dict({**base, "metrics": metrics, "per_sequence": per_seq}))
    return out


def score_file(output: Path, table: ScoreTable) -> Path:
    return output / "scores" / f"{table.method}__{table.fp8_recipe}.parquet"


def scoring_budget(table: ScoreTable) -> tuple[int, str]:
    """(score batches the setup used, why it stopped: ``core/budget.py``); a table scored before
    the adaptive budget used all of its ``num_score_steps``."""
    meta = table.meta
    used = int(meta.get("score_batches_used", meta.get("num_score_steps", 0)))
    return used, str(meta.get("stop", "off"))


def write_score_tables(output: Path, tables: Sequence[ScoreTable]) -> list[str]:
    """One file per scoring setup (re-solvable), and scores.parquet with all rows for reading;
    returns the files written, relative to ``output``."""
    columns = ("method", "fp8_recipe", "key", "score_batches", "stop")
    rows: dict[str, list[Any]] = {
        k: [] for k in (*columns, "group", "block", "kind", "params", "score")
    }
    for t in tables:
        write_scores(t, score_file(output, t))
        used, stop = scoring_budget(t)
        for g in t.groups:
            for k, v in (
                ("method", t.method),
                ("fp8_recipe", t.fp8_recipe),
                ("key", t.key),
                ("score_batches", used),
                ("stop", stop),
                ("group", g.name),
                ("block", g.block),
                ("kind", g.kind),
                ("params", g.params),
                ("score", g.score),
            ):
                rows[k].append(v)
    _write_table(pa.table(rows), output / "scores.parquet")
    return ["scores.parquet", *(str(score_file(output, t).relative_to(output)) for t in tables)]


def read_score_tables(output: Path) -> dict[str, ScoreTable]:
    tables = [read_scores(p) for p in sorted((output / "scores").glob("*.parquet"))]
    return {f"{t.method}|{t.fp8_recipe}": t for t in tables}


def load_results(output: Path) -> list[TrialResult]:
    return read_trials(output / "trials.parquet")
