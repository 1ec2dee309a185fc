"""A long-lived worker: ModelOpt imported and the model loaded once, then scoring and trials.

A sweep keeps one :class:`Worker` per slot of one or more GPUs (``cluster`` wraps it in a Ray actor,
which reserves them; a model on several is spread over them, ``profiles.spread``) for its life:

1. start-up (when the actor is created, while the driver still prepares data and tracking):
   import ModelOpt, load the BF16 model;
2. the scoring shards given to it, each on a copy of that model (AutoQuantize changes the model it
   scores);
3. :meth:`prepare`: the resident :class:`~orchestrator.trial.Evaluator` (quantizers on every
   eligible module, calibrated once, the BF16 reference), built from the loaded model itself;
4. :meth:`evaluate` for every trial sent to it: toggle the plan's quantizers, measure.

So a process imports ModelOpt, loads the model and warms up CUDA once per GPU, and none of that is
paid inside a trial. All model work runs on the process's one model thread
(:func:`~orchestrator.trial.on_model_thread`). No Ray here: this module is plain torch + ModelOpt.
"""

from __future__ import annotations

import copy
import gc
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from orchestrator.config import ModelConfig
from orchestrator.data import DataSets
from orchestrator.profiles import ModelProfile, load_model
from orchestrator.records import stable_hash
from orchestrator.runtime import setup_logging
from orchestrator.trial import Evaluator, default_device, on_model_thread, peak_memory, sync

log = logging.getLogger(__name__)
# Free device memory, in model sizes, needed to score on a copy: the copy plus AutoQuantize's
# activations and gradients (23.9 GiB peak for the 7 GiB 3B model at 4 x 1024 tokens per batch).
COPY_HEADROOM = 4


class Worker:
    """Scores shards and measures plans on one device, keeping one calibrated model resident."""

    def __init__(self, model: ModelConfig, threads: int = 0, gpus: int = 1) -> None:
        if not logging.getLogger().handlers:  # a bare Ray worker process: Ray forwards its stdout
            setup_logging()  # to the driver, so scoring's progress lines reach the sweep's log
        self.model_cfg = model
        self.device = default_device()
        self.gpus = gpus if self.device.startswith("cuda") else 1  # > 1: the model is spread
        if threads > 0 and self.device == "cpu":
            torch.set_num_threads(threads)
        self._pristine: nn.Module | None = None
        self._profile: ModelProfile | None = None
        self._evaluator: Evaluator | None = None
        self._key = ""
        self.startup: dict[str, float] = on_model_thread(self._start)

    def _start(self) -> dict[str, float]:
        t0 = time.perf_counter()
        import modelopt.torch.quantization  # noqa: F401  (seconds, once per process)

        import_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        self._pristine, self._profile = self._load()
        return {"import_seconds": import_seconds, "load_seconds": time.perf_counter() - t0}

    def _load(self) -> tuple[nn.Module, ModelProfile]:
        m = self.model_cfg
        net, profile = load_model(
            m.source, self.device, m.dtype, m.revision, m.trust_remote_code, self.gpus
        )
        sync(self.device)
        return net, profile

    def _fresh_model(self) -> tuple[nn.Module, ModelProfile]:
        """A BF16 model nobody has quantized, for AutoQuantize to change.

        A copy of the loaded model when the device has room for it next to scoring; otherwise the
        loaded model itself (the resident evaluator then loads a clean one from disk), or a fresh
        load once the loaded model has gone to the evaluator.
        """
        if self._pristine is None or self._profile is None:
            return self._load()
        if self._copy_fits():
            return copy.deepcopy(self._pristine), self._profile
        net, self._pristine = self._pristine, None
        return net, self._profile

    def _copy_fits(self) -> bool:
        """Room for a second copy and AutoQuantize's working memory: 4x the model's bytes free.

        A model spread over several GPUs is never copied: its worker was sized to hold one.
        """
        if self.gpus > 1:
            return False
        if not self.device.startswith("cuda") or self._pristine is None:
            return True
        size = sum(p.numel() * p.element_size() for p in self._pristine.parameters())
        free, _ = torch.cuda.mem_get_info(self.device)
        return free >= COPY_HEADROOM * size

    def score(self, data: DataSets, setup: Any, indices: Sequence[int]) -> dict[str, Any]:
        """One scoring shard (all of a setup's score batches when unsharded): table and state."""
        from orchestrator.scoring import score_shard

        def run() -> dict[str, Any]:
            net, profile = self._fresh_model()
            try:
                table, state = score_shard(net, profile, data.score, setup, indices, self.device)
            finally:
                del net
                self._release()
            return {"table": table.to_dict(), "state": state}

        return on_model_thread(run)

    def prepare(
        self, data: DataSets, fp8_recipe: str, reference_cache_bytes: int
    ) -> dict[str, float]:
        """Build the resident evaluator for (data, recipe) unless it is already there.

        Returns what was paid: quantizer insertion, calibration and reference seconds, and a model
        reload when the loaded one was already quantized (zeros, with ``resident_hit`` 1, when the
        evaluator was already resident).
        """
        return on_model_thread(self._prepare, data, fp8_recipe, reference_cache_bytes)

    def _prepare(
        self, data: DataSets, fp8_recipe: str, reference_cache_bytes: int
    ) -> dict[str, float]:
        key = stable_hash([data.hashes(), fp8_recipe, reference_cache_bytes])
        if self._evaluator is not None and key == self._key:
            return {
                "setup_seconds": 0.0,
                "calibration_seconds": 0.0,
                "reference_seconds": 0.0,
                "reload_seconds": 0.0,
                "resident_hit": 1.0,
            }
        self._evaluator = None
        self._release()
        t0 = time.perf_counter()
        if self._pristine is not None:  # the loaded model becomes the resident one
            net, profile = self._pristine, self._profile
            self._pristine = None
        else:  # another recipe or data set: the resident model is quantized, load a clean one
            net, profile = self._load()
        reload_seconds = time.perf_counter() - t0
        assert profile is not None
        peak_memory(self.device)  # the trials' peak starts here, not at scoring
        ev = Evaluator(
            net,
            profile,
            data.calib,
            data.eval,
            fp8_recipe,
            self.device,
            reference_cache_bytes,
        )
        self._evaluator, self._key = ev, key
        return {
            "setup_seconds": ev.setup_seconds,
            "calibration_seconds": ev.calibration_seconds,
            "reference_seconds": ev.reference_seconds,
            "reload_seconds": reload_seconds,
            "resident_hit": 0.0,
        }

    def evaluate(
        self,
        data: DataSets,
        fp8_recipe: str,
        reference_cache_bytes: int,
        fp8_modules: Sequence[str],
        die: bool = False,
    ) -> dict[str, Any]:
        """Measure a plan on the resident model (prepared first if needed), on the model thread.

        The metrics carry what :meth:`prepare` paid for this call (zeros when it was resident).
        ``die`` ends the process as the OOM killer would: the reliability tests' worker fault.
        """
        if die:
            os._exit(137)

        def run() -> dict[str, Any]:
            paid = self._prepare(data, fp8_recipe, reference_cache_bytes)
            assert self._evaluator is not None
            return {**self._evaluator.evaluate(fp8_modules), **paid}

        return on_model_thread(run)

    def _release(self) -> None:
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
