"""Time kl_div scoring with and without prefix reuse, on the same model and data, in one process.

    python scripts/bench_kl_prefix.py --threads 1 --out /tmp/kl16.json                     # CPU
    python scripts/bench_kl_prefix.py --threads 1 --layers 24 --out /tmp/kl24.json         # deeper
    python scripts/bench_kl_prefix.py --device cuda --preset qwen2.5-vl-3b-random \\
        --batch-size 4 --seq-len 1024 --score-steps 8 --out /tmp/kl-3b.json                 # GPU
    python scripts/bench_kl_prefix.py --smoke --out /tmp/kl-smoke.json    # CPU, seconds (tests)

Without ``--preset`` the model is a random-weight Qwen2.5-VL of ``--layers`` decoder blocks and
``--hidden`` width (a 2-block vision tower that scoring never touches; wide enough that the
blocks, not ModelOpt's per-group bookkeeping of ~20 ms CPU, dominate a forward), saved with
``save_pretrained`` and loaded back through ``loading.load_model`` like any local checkpoint.
Both variants score a fresh copy of that model on the same synthetic token batches through
``scoring.run_auto_quantize`` (reuse first, then full forwards, or ``--order`` the other way);
the phases are ModelOpt's own (``calibrate``, ``estimate_sensitivity_scores``; the rest is hparam
insertion and the solve), timed by wrapping those two functions. The ideal ratio beside the
measured one counts block forwards only: the full path runs every block in each of
``1 + groups`` forwards per batch, the reuse path skips the blocks before each group's block.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--preset", default=None, help="a model source (preset name or folder)")
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--intermediate", type=int, default=1536)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--calib-steps", type=int, default=1)
    p.add_argument("--score-steps", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: default)")
    p.add_argument("--order", choices=["reuse-first", "full-first"], default="reuse-first")
    p.add_argument("--out", type=Path, required=True, help="JSON result path")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="every code path in seconds on CPU: a random model of 2 blocks, width 128, "
        "sequences of 32 (replaces --device, --preset, --layers, --hidden, --intermediate, "
        "--seq-len)",
    )
    args = p.parse_args()
    if args.smoke:
        args.device, args.preset, args.seq_len = "cpu", None, 32
        args.layers, args.hidden, args.intermediate = 2, 128, 256
    return args


def random_checkpoint(args: argparse.Namespace, folder: Path) -> str:
    """A seeded random Qwen2.5-VL of the asked depth and width, saved like a real checkpoint."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    heads = max(2, args.hidden // 64)
    half = args.hidden // heads // 2  # mrope sections cover half the head dim
    sections = [half - 2 * (half // 3), half // 3, half // 3]
    cfg = Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=args.hidden,
            num_hidden_layers=args.layers,
            intermediate_size=args.intermediate,
            num_attention_heads=heads,
            num_key_value_heads=max(1, heads // 2),
            vocab_size=args.vocab,
            bos_token_id=0,
            eos_token_id=1,
            max_position_embeddings=4096,
            tie_word_embeddings=True,
            rope_scaling={"type": "mrope", "mrope_section": sections},
        ),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=args.hidden
        ),
        tie_word_embeddings=True,
        image_token_id=2,
        video_token_id=3,
        vision_start_token_id=4,
        vision_end_token_id=5,
    )
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(cfg).save_pretrained(folder)
    return str(folder)


class PhaseTimer:
    """Wall and CPU seconds inside ModelOpt's calibration and score estimation (both functions
    wrapped). CPU seconds (this process, all threads) are the steadier measure on a shared box:
    they do not count the time other processes hold the cores."""

    def __init__(self) -> None:
        from modelopt.torch.quantization import algorithms, model_quant

        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.restore: list[Callable[[], None]] = []
        self._wrap(model_quant, "calibrate", "calibration")
        searcher = algorithms.AutoQuantizeKLDivSearcher
        self._wrap(searcher, "estimate_sensitivity_scores", "scoring")

    def _wrap(self, owner: Any, attr: str, phase: str) -> None:
        inner = getattr(owner, attr)

        def timed(*a: Any, **k: Any) -> Any:
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return inner(*a, **k)
            finally:
                self.wall[phase] = self.wall.get(phase, 0.0) + time.perf_counter() - t0
                self.cpu[phase] = self.cpu.get(phase, 0.0) + time.process_time() - c0

        setattr(owner, attr, timed)
        self.restore.append(lambda: setattr(owner, attr, inner))

    def close(self) -> None:
        for undo in self.restore:
            undo()


class ReuseCounts(logging.Handler):
    """Keeps the forward counts that ``scoring_step`` logs when a reuse run ends."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("prefix reuse %s: forwards"):
            self.counts = dict(record.args[1])  # type: ignore[index]


def run_variant(model: Any, profile: Any, data: Any, setup: Any, device: str) -> dict[str, Any]:
    import torch

    from orchestrator.model.device import sync
    from orchestrator.model.scoring import run_auto_quantize, state_to_json

    timer, counts = PhaseTimer(), ReuseCounts()
    reuse_log = logging.getLogger("orchestrator.model.scoring_forward")
    reuse_log.addHandler(counts)
    reuse_log.setLevel(min(reuse_log.getEffectiveLevel(), logging.DEBUG))  # its counts line
    cuda = device.startswith("cuda")
    sync(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    t0, c0 = time.perf_counter(), time.process_time()
    state = state_to_json(run_auto_quantize(model, profile, data, setup, device))
    sync(device)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    timer.close()
    logging.getLogger("orchestrator.model.scoring_forward").removeHandler(counts)
    scores = {k: v["scores"] for k, v in state["candidate_stats"].items()}
    peak = torch.cuda.max_memory_allocated(device) if cuda else None
    return {
        "peak_allocated_gib": peak / 2**30 if cuda else None,
        "peak_above_start_gib": (peak - base) / 2**30 if cuda else None,
        "total_s": wall,
        "total_cpu_s": cpu,
        "phases_s": {**timer.wall, "other": wall - sum(timer.wall.values())},
        "phases_cpu_s": {**timer.cpu, "other": cpu - sum(timer.cpu.values())},
        "forwards": counts.counts,
        "scores": scores,
    }


def ideal_ratio(layers: int, groups_per_block: list[int]) -> float:
    """Block forwards per batch, full over reuse: (1 + G) L / (L + sum_g (L - block_g))."""
    groups = sum(groups_per_block)
    reuse = layers + sum(n * (layers - b) for b, n in enumerate(groups_per_block))
    return (1 + groups) * layers / reuse


def main() -> None:
    args = parse_args()
    load_start = _load_avg()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch

    from orchestrator.core.config import DataConfig
    from orchestrator.model.data import build_datasets
    from orchestrator.model.loading import load_model, text_config
    from orchestrator.model.scoring import ScoringSetup
    from orchestrator.runtime.host import library_versions

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory()
    source = args.preset or random_checkpoint(args, Path(tmp.name) / "model")
    pristine, profile = load_model(source, args.device)
    text = text_config(pristine.config)
    layers = int(text.num_hidden_layers)
    data_cfg = DataConfig(
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        calib_batches=args.calib_steps,
        score_batches=args.score_steps,
        eval_batches=1,
    )
    data = build_datasets(data_cfg, int(text.vocab_size), None, seed=0).score
    order = [True, False] if args.order == "reuse-first" else [False, True]
    runs = {}
    for reuse in order:
        setup = ScoringSetup(
            source, None, profile.name, data.hash, "kl_div", "FP8_DEFAULT_CFG",
            args.calib_steps, args.score_steps, reuse,
        )  # fmt: skip
        model = copy.deepcopy(pristine)
        runs["reuse" if reuse else "full"] = run_variant(model, profile, data, setup, args.device)
        del model
    groups = [n for n in runs["reuse"]["scores"] if ".layers." in n]  # the LM's searched groups
    per_block = [0] * layers
    for n in groups:
        per_block[int(n.split(".layers.")[1].split(".")[0])] += 1
    full, reused = runs["full"], runs["reuse"]
    # What the reuse path keeps per batch: one block input per decoder block (scoring_forward).
    dtype_bytes = next(pristine.parameters()).element_size()
    block_inputs = args.batch_size * args.seq_len * int(text.hidden_size) * dtype_bytes * layers
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {
            "device": args.device,
            "cpu_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
            "load_avg_1m_at_start": load_start,
            "load_avg_1m_at_end": _load_avg(),
        },
        "versions": {"python": platform.python_version(), **library_versions()},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "model": {"source": args.preset or "random", "layers": layers, "groups": len(groups)},
        "scores_bitwise_equal": full["scores"] == reused["scores"],
        "ratio_total": full["total_s"] / reused["total_s"],
        "ratio_scoring": full["phases_s"]["scoring"] / reused["phases_s"]["scoring"],
        "ratio_total_cpu": full["total_cpu_s"] / reused["total_cpu_s"],
        "ratio_scoring_cpu": full["phases_cpu_s"]["scoring"] / reused["phases_cpu_s"]["scoring"],
        "ideal_ratio_scoring": ideal_ratio(layers, per_block),
        "recorded_block_inputs_gib": block_inputs / 2**30,
        "runs": {k: {x: v for x, v in r.items() if x != "scores"} for k, r in runs.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "args"}, indent=2))


def _load_avg() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return None


if __name__ == "__main__":
    main()
