"""The pure core: what a sweep decides, as plain data and arithmetic.

records (frozen records with dict round trips), config (the sweep config and the scheme catalog),
yaml_input (the YAML a person hands it: no aliases, no repeated keys, bounded size),
points (which points run, and in which round), planning (scores + point -> the exact FP8 module
set), selection (the front and the three names), objectives, stats (bootstrap intervals, verdict
rules), verdicts (schemes against controls), memory (what a worker needs), numerics (the dtype
and fused-layer scales a number assumes, as one label).

May import: the standard library, numpy, pydantic, yaml, and other ``orchestrator.core`` modules.
Never torch, transformers, ModelOpt, Ray or MLflow: planning and selection are tested in
milliseconds and run where no GPU stack is installed (``tests/unit/test_layers.py``).
"""
