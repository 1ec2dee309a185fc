"""The Ray side, and the only ``import ray``: workers, the Tune trial, the Tune runs.

The trial path: :mod:`~orchestrator.search.trial` (the Tune trial: plan a point, borrow a worker,
log the child run) -> :mod:`~orchestrator.search.pool` (the worker pool: Ray actors, the
dispatcher that lends them) -> :mod:`orchestrator.model.worker` (the evaluation itself).
Beside it: ray_env (what Ray reads from the environment), capacity (the memory plan against the
machine or cluster), rounds (scoring fan-out, then the grid and control rounds), tuner (one Tune
run and its progress lines), write_watch (a Tune run stopped at the first write the storage
refused).

May import: ``orchestrator.core``, ``runtime``, ``outputs``, ``model`` (inside a worker actor
or a function the driver calls once Ray is up), ``tracking``, ray. Never an entry point
(``tests/unit/test_layers.py``).
"""
