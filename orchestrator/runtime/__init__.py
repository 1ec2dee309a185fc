"""Process set-up shared by every entry point and worker: logging, seeds, facts about the host.

logs (the console's records, libraries' output diverted to files), seeds, host (git commit,
GPUs from nvidia-smi, host memory, process age), hooks (the tests' faults; off outside them).

May import: ``orchestrator.core``, ``orchestrator.outputs``, numpy; torch only inside a function
that needs it. Never Ray or MLflow (``tests/unit/test_layers.py``).
"""
