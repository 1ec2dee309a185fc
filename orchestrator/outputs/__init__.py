"""The files of ``--output``: written atomically, read back by ``select``, ``export`` and resumes.

files (atomic writes, sweep.json), tables (scores.parquet, trials.parquet), plots (pareto.png,
sensitivity.png), publish (selection's results as schemes.yaml and plans/), summary (the console's
closing lines), ownership (one driver per folder), storage (a write the storage refused for good:
one error, exit 5), integrity (the sha256 of every file read back, kept in sweep.json).

May import: ``orchestrator.core``, pyarrow, matplotlib, yaml. Never torch, Ray or MLflow, so a
finished sweep is re-selected without a GPU stack (``tests/unit/test_layers.py``).
"""
