"""MLflow, and the only ``import mlflow``: the client calls and what a sweep writes there.

client (experiments, the parent run, one child run per trial, artifacts, views), sweep_run (the
sweep's MLflow policy: description, the runs-table view, settling and publishing), uri (the
default store of an output folder; no MLflow import, so the input checks may use it).

May import: ``orchestrator.core``, ``runtime``, ``outputs``, mlflow. Never torch or Ray
(``tests/unit/test_layers.py``).
"""
