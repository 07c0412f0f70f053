#!/usr/bin/env python3
"""Train Itera-Lite or the Transformer baseline on Tiny Shakespeare (characters).

AdamW, cosine schedule with linear warm-up, gradient clipping, fixed seeds, resumable checkpoints
(model, optimizer, data-sampler RNG, step, elapsed seconds) and optional distillation from a teacher
checkpoint (KL on temperature-softened outputs plus the hard loss).

  /usr/bin/python3 tools/train/train.py --model tiny --steps 1500 --out tools/train/checkpoints/tiny
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

# One thread: on a shared, oversubscribed CPU, multi-threaded BLAS/OpenMP spin-waits cost ~10x (measured).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before torch loads OpenBLAS

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import DEFAULT_DATA_DIR, REPO, TRAIN_FILE, DataError, read_text, split_train_val  # noqa: E402
from model import CONFIGS, build_model, config_from_dict, count_parameters  # noqa: E402
from tokenizer import CharTokenizer  # noqa: E402

AUX_LOSS_WEIGHT = 0.01


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(CONFIGS), required=True)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR, help="folder holding tinyshakespeare.txt")
    p.add_argument("--out", type=Path, required=True, help="checkpoint folder (resumed if it holds last.pt)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--min-lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-seconds", type=float, default=3600, help="stop (and save) after this much training time")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-batches", type=int, default=8)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--teacher", type=Path, help="checkpoint to distil from (KL + hard loss)")
    p.add_argument("--kd-temperature", type=float, default=2.0)
    p.add_argument("--kd-alpha", type=float, default=0.5, help="weight of the KL term (1 - alpha on the hard loss)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    for name in ("steps", "batch", "seq_len", "threads", "eval_every", "save_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0 or not 0 <= args.kd_alpha <= 1 or args.kd_temperature <= 0:
        p.error("--warmup must be >= 0, --kd-alpha in [0, 1], --kd-temperature > 0")
    return args


def lr_at(step: int, elapsed: float, args) -> float:
    """Warm-up, then cosine decay over whichever budget runs out first: steps or --max-seconds."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    by_steps = (step - args.warmup) / max(1, args.steps - args.warmup)
    progress = min(1.0, max(by_steps, elapsed / args.max_seconds))
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * progress))


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def get_batch(data: torch.Tensor, batch: int, seq_len: int, gen: torch.Generator):
    starts = torch.randint(0, len(data) - seq_len - 1, (batch,), generator=gen)
    x = torch.stack([data[s : s + seq_len] for s in starts.tolist()])
    y = torch.stack([data[s + 1 : s + seq_len + 1] for s in starts.tolist()])
    return x, y


@torch.no_grad()
def quick_val_loss(model, val: torch.Tensor, args) -> float:
    """Mean loss on fixed validation windows (a progress signal; the reported figure comes from evaluate.py)."""
    gen = torch.Generator().manual_seed(0)
    model.eval()
    model.set_sparse_moe(True)
    losses = []
    for _ in range(args.eval_batches):
        x, y = get_batch(val, args.batch, args.seq_len, gen)
        logits, _ = model(x)
        losses.append(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).item())
    model.train()
    return sum(losses) / len(losses)


def load_checkpoint(path: Path):
    ckpt = torch.load(path, map_location="cpu")
    if "pos.weight" in ckpt["model"]:
        raise ValueError(
            f"{path} is a Transformer with learned positions (before rotary positions): retrain it with "
            "tools/train/train.py --model transformer-tiny"
        )
    model = build_model(config_from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model, CharTokenizer(ckpt["chars"]), ckpt


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    try:
        text = read_text(args.data / TRAIN_FILE)
        train_text, val_text = split_train_val(text)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tok = CharTokenizer.from_text(train_text)
    train = torch.tensor(tok.encode(train_text), dtype=torch.long)
    val = torch.tensor(tok.encode(val_text), dtype=torch.long)
    if len(val) <= args.seq_len + 1:
        print(f"error: --seq-len {args.seq_len} is longer than the validation split ({len(val)})", file=sys.stderr)
        return 2

    config = CONFIGS[args.model](tok.vocab_size)
    if getattr(config, "context_length", args.seq_len) < args.seq_len:
        print(f"error: --seq-len {args.seq_len} exceeds the model context {config.context_length}", file=sys.stderr)
        return 2
    model = build_model(config)
    model.set_sparse_moe(True)  # same function as the dense exported path, fewer FLOPs
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.99),
    )
    gen = torch.Generator().manual_seed(args.seed)

    teacher = None
    if args.teacher:
        if not args.teacher.is_file():
            print(f"error: teacher checkpoint not found: {args.teacher}", file=sys.stderr)
            return 2
        teacher, teacher_tok, _ = load_checkpoint(args.teacher)
        if teacher_tok.itos != tok.itos:
            print(f"error: teacher {args.teacher} was trained with a different vocabulary", file=sys.stderr)
            return 2
        teacher.eval()
        teacher.set_sparse_moe(True)

    args.out.mkdir(parents=True, exist_ok=True)
    last = args.out / "last.pt"
    step, elapsed, history = 0, 0.0, []
    if last.is_file():
        ckpt = torch.load(last, map_location="cpu")
        if ckpt["config"] != config.to_dict():
            print(f"error: {last} holds a different model configuration; use another --out", file=sys.stderr)
            return 2
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        gen.set_state(ckpt["sampler_rng"])
        torch.set_rng_state(ckpt["torch_rng"])
        step, elapsed, history = ckpt["step"], ckpt["seconds"], ckpt["history"]
        print(f"resumed from {last} at step {step} ({elapsed:.0f} s)", file=sys.stderr)

    n_params = count_parameters(model)
    print(f"{args.model}: {n_params:,} parameters, vocab {tok.vocab_size}, {len(train):,} train chars", file=sys.stderr)

    def save(path: Path):
        tmp = path.with_suffix(".tmp")
        torch.save(
            {
                "config": config.to_dict(),
                "chars": tok.itos[1:],
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "sampler_rng": gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                "step": step,
                "seconds": elapsed,
                "history": history,
                "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "command": " ".join(["/usr/bin/python3", "tools/train/train.py", *(argv or sys.argv[1:])]),
                "git_commit": git_commit(),
                "parameters": n_params,
                "tokens_seen": step * args.batch * args.seq_len,
            },
            tmp,
        )
        os.replace(tmp, path)

    model.train()
    t0 = time.time() - elapsed
    while step < args.steps and elapsed < args.max_seconds:
        lr = lr_at(step, elapsed, args)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = get_batch(train, args.batch, args.seq_len, gen)
        logits, _ = model(x)
        hard = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss = hard + AUX_LOSS_WEIGHT * model.aux_loss
        if teacher is not None:
            with torch.no_grad():
                t_logits, _ = teacher(x)
            temp = args.kd_temperature
            kl = F.kl_div(
                F.log_softmax(logits / temp, -1).reshape(-1, logits.shape[-1]),
                F.log_softmax(t_logits / temp, -1).reshape(-1, logits.shape[-1]),
                reduction="batchmean",
                log_target=True,
            ) * (temp * temp)
            loss = (1 - args.kd_alpha) * hard + args.kd_alpha * kl + AUX_LOSS_WEIGHT * model.aux_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        step += 1
        elapsed = time.time() - t0
        if not args.quiet and (step % 10 == 0 or step == 1):
            rate = step * args.batch * args.seq_len / max(elapsed, 1e-9)
            print(
                f"step {step}/{args.steps} loss {hard.item():.4f} lr {lr:.2e} {elapsed:.0f}s {rate:.0f} tok/s",
                file=sys.stderr,
                flush=True,
            )
        if step % args.eval_every == 0 or step == args.steps:
            v = quick_val_loss(model, val, args)
            history.append({"step": step, "seconds": round(elapsed, 1), "train_loss": hard.item(), "val_loss": v})
            print(f"step {step}: val loss {v:.4f}", file=sys.stderr, flush=True)
        if step % args.save_every == 0:
            save(last)
    save(last)
    save(args.out / "final.pt")
    summary = {"step": step, "seconds": round(elapsed, 1), "history": history[-1:] if history else []}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
