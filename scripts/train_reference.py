"""Train the reference model shipped as the ``wikitext-qwen2.5-vl`` preset.

Random-weight presets give flat logits, so every FP8 trial on them measures noise: a KL of 1e-4
against a model that knows nothing says nothing about which layer is sensitive. This script trains
a real Qwen2.5-VL architecture, small enough to live in the repository (12 decoder blocks, about
8 M language-model parameters, under 20 MB in bf16), on WikiText-2 text that also ships in the
repository, so the offline demo and the CPU tests can judge schemes on a model whose quality can
actually drop. Twelve blocks rather than four, so that block-level choices (a coverage of 0.25, the
first and last block kept BF16) pick a few blocks out of many instead of a quarter or half of the
model; the width is cut (intermediate 512) to pay for the depth.

What it does, in order:

1. trains a byte-level BPE tokenizer (``tokenizers``, 4096 ids, lossless: bytes in, bytes out) on
   ``data/wikitext-2/valid.txt``, or with ``--tokenizer DIR`` reuses the one in DIR byte for byte
   (the shipped preset does: token ids, and so the data hashes of every sweep on it, stay the same
   when the model is retrained);
2. builds ``Qwen2_5_VLForConditionalGeneration`` from a ``Qwen2_5_VLConfig`` with a seed; the vision
   tower is never trained and keeps its seeded random weights (the sweep keeps it BF16 anyway);
3. trains the language model on next-token loss over random crops of the first 95% of valid.txt and
   keeps the checkpoint with the lowest loss on the last 5% (the dev part), so test.txt is never
   used to choose anything;
4. saves the model in bf16 safetensors and the tokenizer as a ``PreTrainedTokenizerFast``, reloads
   both from the folder and records in ``reference.json`` the held-out perplexity on test.txt in
   float32 from the bf16 weights: over the whole split, and over the first 64 windows of 256 tokens
   on CPU, which is what ``tests/integration/test_reference.py`` recomputes.

GPU (the shipped folder, keeping its tokenizer; the preset's README says how long it took where):

    python -m scripts.train_reference --out orchestrator/presets/wikitext-qwen2.5-vl \
        --tokenizer orchestrator/presets/wikitext-qwen2.5-vl

CPU (a code-path check in a few minutes; the model it writes is barely trained):

    python -m scripts.train_reference --out /tmp/ref-cpu --steps 20 --batch-size 4 --eval-every 10

Smoke (every step above in seconds on CPU: a 2-block model of width 64 with a 512-id tokenizer,
4 steps, on the first 50,000 characters of each split; ``tests/integration/test_scripts.py`` runs
it):

    python -m scripts.train_reference --smoke --out /tmp/ref-smoke

Perplexity is per BPE token over non-overlapping windows (each window's first token is not
predicted), the way ``orchestrator/model/data.py`` cuts text, so it is not comparable with
word-level WikiText-2 figures. Seeds fix the tokenizer, the initial weights and the batch order; GPU
kernels are not bitwise deterministic, so a rerun on another card lands close to, not exactly on,
the recorded numbers, which is why the test checks the shipped weights and not a retrained model.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from orchestrator.runtime.seeds import seed_everything  # torch is loaded: seeds it too

log = logging.getLogger("train_reference")

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "wikitext-2"
# id 0 ends text; 1-4 are the ids Qwen2.5-VL reserves for images and video, so the config is whole
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
EVAL_SEQ_LEN = 256
SUBSET_WINDOWS = 64  # what the CPU test recomputes: the first 64 windows of test.txt, 16384 tokens


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m scripts.train_reference", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--out", type=Path, required=True, help="folder for the preset (overwritten)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="folder whose tokenizer.json and tokenizer_config.json are reused instead of training",
    )
    p.add_argument("--vocab-size", type=int, default=4096, help="when training a tokenizer")
    p.add_argument("--layers", type=int, default=12, help="decoder blocks")
    p.add_argument("--hidden", type=int, default=256, help="a multiple of 64 (4 heads, mrope)")
    p.add_argument("--intermediate", type=int, default=512, help="MLP width")
    p.add_argument(
        "--seq-len", type=int, default=512, help="training crop; also max_position_embeddings"
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--steps", type=int, default=600, help="the cosine's length; 12 blocks overfit past ~600"
    )
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--attention-dropout", type=float, default=0.1)
    p.add_argument("--dropout", type=float, default=0.3, help="residual dropout, training only")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument(
        "--eval-every", type=int, default=25, help="dev loss cadence; the best step is kept"
    )
    p.add_argument(
        "--dev-share", type=float, default=0.05, help="tail of valid.txt kept out of training"
    )
    p.add_argument("--smoke", action="store_true", help=f"tiny and quick: {SMOKE}")
    args = p.parse_args()
    if args.smoke:
        vars(args).update(SMOKE)
    return args


# --smoke: every step in seconds on CPU (what the tests run), not a usable model
SMOKE = {
    "vocab_size": 512,
    "layers": 2,
    "hidden": 64,
    "intermediate": 128,
    "seq_len": 64,
    "batch_size": 2,
    "steps": 4,
    "warmup": 1,
    "eval_every": 2,
}
SMOKE_TEXT_CHARS = 50_000  # of valid.txt and of test.txt: ~25k tokens each at 512 ids


def train_tokenizer(text: str, vocab_size: int) -> Any:
    """Byte-level BPE, no normalizer: any text encodes, and decoding gives back the same bytes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(text.splitlines(keepends=True), trainer)
    eot = SPECIAL_TOKENS[0]
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=eot,
        eos_token=eot,
        pad_token=eot,
        additional_special_tokens=SPECIAL_TOKENS[1:],
        clean_up_tokenization_spaces=False,  # WikiText's " , " must survive decode
    )


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def reuse_tokenizer(folder: Path) -> tuple[Any, dict[str, bytes]]:
    """The tokenizer in ``folder`` and its files' bytes, read now: ``--out`` may be that folder."""
    from transformers import PreTrainedTokenizerFast

    files = {name: (folder / name).read_bytes() for name in TOKENIZER_FILES}
    return PreTrainedTokenizerFast.from_pretrained(folder), files


def encode(tok: Any, text: str) -> torch.Tensor:
    """The whole text in one call, as orchestrator/model/data.py tokenizes a data source."""
    return torch.tensor(tok(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


def build_config(args: argparse.Namespace, tok: Any) -> Any:
    from transformers import Qwen2_5_VLConfig

    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    head_dim = args.hidden // 4
    # rotary pairs, split over (temporal, height, width) in the 3B's 16/24/24 proportions
    half = head_dim // 2
    config = Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=args.hidden,
            num_hidden_layers=args.layers,
            intermediate_size=args.intermediate,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=len(tok),
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|endoftext|>"],
            pad_token_id=ids["<|endoftext|>"],
            max_position_embeddings=args.seq_len,
            attention_dropout=args.attention_dropout,
            tie_word_embeddings=True,
            rope_scaling={
                "type": "mrope",
                "mrope_section": [half // 4, 3 * half // 8, 3 * half // 8],
            },
        ),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=args.hidden,
            fullatt_block_indexes=[1],
        ),
        tie_word_embeddings=True,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|endoftext|>"],
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    return config


@torch.no_grad()
def perplexity(model: Any, ids: torch.Tensor, device: str, max_windows: int | None = None) -> float:
    """exp(mean next-token NLL) over non-overlapping EVAL_SEQ_LEN windows, float32 logits."""
    n = len(ids) // EVAL_SEQ_LEN
    n = min(n, max_windows) if max_windows else n
    windows = ids[: n * EVAL_SEQ_LEN].view(n, EVAL_SEQ_LEN)
    total, count = 0.0, 0
    for chunk in windows.split(16):
        chunk = chunk.to(device)
        logits = model(input_ids=chunk).logits.float()
        total += F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1), reduction="sum"
        ).item()
        count += chunk[:, 1:].numel()
    return math.exp(total / count)


def add_residual_dropout(model: Any, p: float) -> None:
    """Dropout on the embeddings and on what each block adds to the residual stream, in training.

    Qwen2 has no such dropout, and 290k tokens of text overfit the 8 M model within about twenty
    epochs (at 0.1 its dev loss turned up after ~375 of 800 steps; 0.3 and a 600-step cosine kept
    it falling to the last step). Forward hooks leave the architecture alone: they are not saved,
    so the folder holds a plain Qwen2.5-VL, and in eval mode they do nothing.
    """
    lm = model.model.language_model
    targets = [lm.embed_tokens] + [
        m for b in lm.layers for m in (b.self_attn.o_proj, b.mlp.down_proj)
    ]
    for m in targets:
        m.register_forward_hook(lambda mod, _inp, out: F.dropout(out, p, mod.training))


def lr_at(step: int, args: argparse.Namespace) -> float:
    """Linear warmup, then cosine down to a tenth of the peak at the last step."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    t = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * t)))


def train(
    model: Any,
    train_ids: torch.Tensor,
    dev_ids: torch.Tensor,
    args: argparse.Namespace,
    device: str,
) -> dict[str, Any]:
    """Random crops of the training part; the state with the lowest dev perplexity comes back."""
    lm_params = [p for n, p in model.named_parameters() if "visual" not in n]
    decay = [p for p in lm_params if p.dim() >= 2]
    no_decay = [p for p in lm_params if p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": args.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=args.lr,
        betas=(0.9, 0.95),
        fused=device.startswith("cuda"),
    )
    gen = torch.Generator().manual_seed(args.seed)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))
    best = {"dev_perplexity": math.inf, "step": 0, "state": None}
    history = []
    t0 = time.perf_counter()
    for step in range(args.steps):
        model.train()
        starts = torch.randint(0, len(train_ids) - args.seq_len, (args.batch_size,), generator=gen)
        batch = torch.stack([train_ids[s : s + args.seq_len] for s in starts.tolist()]).to(device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        with autocast:
            loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm_params, 1.0)
        opt.step()
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            model.eval()
            with autocast:
                dev = perplexity(model, dev_ids, device)
            history.append(
                {
                    "step": step + 1,
                    "train_loss": round(loss.item(), 4),
                    "dev_perplexity": round(dev, 3),
                }
            )
            log.info(
                "step %d  train loss %.3f  dev ppl %.2f  (%.0fs)",
                step + 1,
                loss.item(),
                dev,
                time.perf_counter() - t0,
            )
            if dev < best["dev_perplexity"]:
                best = {
                    "dev_perplexity": dev,
                    "step": step + 1,
                    "state": {
                        k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
                    },
                }
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    model.load_state_dict(best["state"])
    log.info(
        "kept step %d (dev ppl %.2f) of %d, %.0fs",
        best["step"],
        best["dev_perplexity"],
        args.steps,
        seconds,
    )
    return {
        "best_step": best["step"],
        "dev_perplexity": best["dev_perplexity"],
        "seconds": seconds,
        "history": history,
    }


def evaluate_saved(out: Path, test_text: str, device: str) -> dict[str, float]:
    """Reload the folder as a user would: float32 from the bf16 weights, TF32 off (GPU ~ CPU)."""
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    tok = AutoTokenizer.from_pretrained(out)
    ids = encode(tok, test_text)
    result = {"test_tokens": len(ids)}
    for where in dict.fromkeys([device, "cpu"]):
        model = (
            Qwen2_5_VLForConditionalGeneration.from_pretrained(out, dtype=torch.float32)
            .to(where)
            .eval()
        )
        if where == device:
            result["test_perplexity"] = perplexity(model, ids, where)
        if where == "cpu":
            result["test_subset_perplexity"] = perplexity(model, ids, where, SUBSET_WINDOWS)
    return result


def write_readme(out: Path, ref: dict[str, Any]) -> None:
    arch = ref["architecture"]
    rows = [
        (
            "trained on",
            f"`data/wikitext-2/valid.txt`, first {1 - ref['dev_share']:.0%} "
            "(the rest chose the checkpoint)",
        ),
        ("held out", "`data/wikitext-2/test.txt`, never seen in training or selection"),
        (
            "test perplexity",
            f"{ref['test_perplexity']:.2f} per BPE token, whole split "
            f"({ref['test_tokens']:,} tokens, windows of {ref['eval_seq_len']})",
        ),
        (
            "test subset perplexity",
            f"{ref['test_subset_perplexity']:.3f}, first "
            f"{ref['subset_windows']} windows, CPU float32 (what the test recomputes)",
        ),
        (
            "training",
            f"{ref['steps']} steps, {ref['train_tokens']:,} tokens, "
            f"{ref['train_seconds']:.0f} s on {ref['device']}, seed {ref['seed']}",
        ),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    (out / "README.md").write_text(
        f"""# wikitext-qwen2.5-vl: the shipped reference model

A Qwen2.5-VL architecture ({arch["layers"]} decoder blocks, hidden {arch["hidden"]},
{ref["lm_params"]:,} language-model parameters) whose language model was trained on WikiText-2 by
`scripts/train_reference.py`; the vision tower is untrained (seeded random weights). Use it by name:
`model.source: wikitext-qwen2.5-vl`. It reads text with its own byte-level BPE tokenizer
({arch["vocab"]} ids).

| | |
|---|---|
{table}

`reference.json` holds every number above, the arguments and the dev curve.

## Licence

The weights and the tokenizer are derived from WikiText-2 (Merity, Xiong, Bradbury and Socher, 2016,
"Pointer Sentinel Mixture Models"), text from Wikipedia licensed under CC BY-SA 3.0
(https://creativecommons.org/licenses/by-sa/3.0/). They are distributed under the same licence,
CC BY-SA 3.0, with that attribution. The text itself is in `data/wikitext-2/` (see its README).
""",
        encoding="utf-8",
    )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    card = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    seed_everything(args.seed)
    valid = (DATA / "valid.txt").read_text(encoding="utf-8")
    test = (DATA / "test.txt").read_text(encoding="utf-8")
    if args.smoke:
        valid, test = valid[:SMOKE_TEXT_CHARS], test[:SMOKE_TEXT_CHARS]
    if args.tokenizer:
        tok, tokenizer_files = reuse_tokenizer(args.tokenizer)
    else:
        tok, tokenizer_files = train_tokenizer(valid, args.vocab_size), None
    ids = encode(tok, valid)
    n_dev = int(len(ids) * args.dev_share)
    train_ids, dev_ids = ids[:-n_dev], ids[-n_dev:]
    log.info(
        "tokenizer: %d ids; valid.txt: %d tokens (%d train, %d dev)",
        len(tok),
        len(ids),
        len(train_ids),
        n_dev,
    )

    from transformers import Qwen2_5_VLForConditionalGeneration

    config = build_config(args, tok)
    seed_everything(args.seed)
    model = Qwen2_5_VLForConditionalGeneration(config).to(device)
    lm_params = sum(p.numel() for n, p in model.named_parameters() if "visual" not in n)
    log.info(
        "model: %d parameters, %d in the language model; training on %s",
        sum(p.numel() for p in model.parameters()),
        lm_params,
        card,
    )
    add_residual_dropout(model, args.dropout)
    run = train(model, train_ids, dev_ids, args, device)

    args.out.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(args.out)
    if tokenizer_files:
        for name, data in tokenizer_files.items():
            (args.out / name).write_bytes(data)
    else:
        tok.save_pretrained(args.out)
    scores = evaluate_saved(args.out, test, device)
    ref = {
        "preset": "wikitext-qwen2.5-vl",
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in scores.items()},
        "eval_seq_len": EVAL_SEQ_LEN,
        "subset_windows": SUBSET_WINDOWS,
        "eval_dtype": "float32 from bf16 weights; subset on CPU",
        "dev_perplexity": round(run["dev_perplexity"], 4),
        "dev_share": args.dev_share,
        "steps": args.steps,
        "kept_step": run["best_step"],
        "train_tokens": args.steps * args.batch_size * args.seq_len,
        "train_text_tokens": len(train_ids),
        "train_seconds": round(run["seconds"], 1),
        "device": card,
        "seed": args.seed,
        "lm_params": lm_params,
        "architecture": {
            "layers": args.layers,
            "hidden": args.hidden,
            "intermediate": args.intermediate,
            "heads": 4,
            "kv_heads": 2,
            "vocab": len(tok),
        },
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "versions": {
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "tokenizers": __import__("tokenizers").__version__,
        },
        "dev_curve": run["history"],
    }
    (args.out / "reference.json").write_text(json.dumps(ref, indent=1) + "\n", encoding="utf-8")
    write_readme(args.out, ref)
    log.info(
        "test perplexity %.2f (subset %.3f); wrote %s",
        ref["test_perplexity"],
        ref["test_subset_perplexity"],
        args.out,
    )


if __name__ == "__main__":
    main()
