"""The model side: everything that touches torch, transformers or ModelOpt.

families (which transformers class loads a model type, and which modules may go to FP8), presets,
loading, data (token sets), images (image+text records through the model's processor), datasets
(a sweep's token sets from its config), batches, scoring (AutoQuantize), quantize (ModelOpt
helpers shared with export), fused_scales (fused q/k/v and gate/up with the scales vLLM serves them
with), device (the model thread, peaks), worker (what one worker process does: the model loaded
once, scoring shards, plans measured against the reference).

May import: ``orchestrator.core``, ``orchestrator.runtime``, ``orchestrator.outputs`` (files and
tables), torch, transformers, ModelOpt. Never Ray or MLflow: a worker's model code runs the same
inside or outside a Ray actor (``tests/unit/test_layers.py``).
"""
