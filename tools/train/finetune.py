#!/usr/bin/env python3
"""Fine-tune a house model on the fleet's feedback (`itera fleet feedback --export FILE.jsonl`).

Continues training the base model folder's weights on the accepted (rating +1: prompt + text) and
corrected (prompt + correction) samples, mixed with the original training text (tinyshakespeare's
first 90%; ITERA_DATASETS overrides the folder), at a small learning rate. Then it re-measures the
held-out and out-of-domain figures (evaluate.py's suite) and writes a new model folder whose card
records its parent, the feedback it used and the figures -- or writes nothing (exit 3) when the
held-out nats/char got worse than the budget.

Weights: the committed model folders hold no PyTorch checkpoint. For Itera-Lite they are read back
from model.onnx's initializers (the inverse of onnx_graph.py's layout) and checked against the
folder's golden.json logits before training; a Transformer folder needs --checkpoint (its
tools/train/checkpoints/*.pt), since its traced graph has no stable weight names.

  /usr/bin/python3 tools/train/finetune.py --feedback fb.jsonl --base models/itera-lite-micro --out models/itera-lite-micro-ft
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before torch loads OpenBLAS (see train.py)

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from onnx import numpy_helper  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import TRAIN_FILE, DataError, datasets_dir, read_text, split_train_val  # noqa: E402
from evaluate import evaluate  # noqa: E402
from export import export_folder  # noqa: E402
from model import IteraLite, IteraLiteConfig, build_model  # noqa: E402
from tokenizer import CharTokenizer  # noqa: E402
from train import AUX_LOSS_WEIGHT, get_batch, git_commit, load_checkpoint  # noqa: E402

HELD_OUT = "tinyshakespeare-val"


class FinetuneError(Exception):
    """What failed, where, and how to fix it (one line for the user)."""


def load_itera_lite_folder(folder: Path):
    """Itera-Lite weights read back from model.onnx (inverse of onnx_graph.build_graph), checked against golden.json."""
    card = json.loads((folder / "itera.json").read_text())
    arch = card.get("architecture", {})
    if arch.get("family") != "itera-lite":
        raise FinetuneError(
            f"{folder}: a {arch.get('family', 'unknown')} model; only Itera-Lite weights can be read back from "
            "model.onnx -- pass --checkpoint with its training checkpoint (tools/train/checkpoints/...)"
        )
    names = {f.name for f in fields(IteraLiteConfig)}
    config = IteraLiteConfig(**{k: v for k, v in arch.items() if k in names and k != "family"})
    model = build_model(config)
    init = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(folder / "model.onnx")).graph.initializer}
    c = config
    sd = {"embed.weight": init["model.embed.weight"], "norm.weight": init["model.norm.weight"]}
    for i in range(c.n_layers):
        w, b = f"model.blocks.{i}.", f"blocks.{i}."
        e, d_ff, d = c.n_experts, c.d_ff, c.d_model
        sd.update(
            {
                b + "norm1.weight": init[w + "norm1.weight"],
                b + "norm2.weight": init[w + "norm2.weight"],
                b + "mixer.in_proj.weight": init[w + "mixer.in_proj.weight_t"].T,
                b + "mixer.conv.weight": init[w + "mixer.conv.weight"],
                b + "mixer.conv.bias": init[w + "mixer.conv.bias"],
                b + "mixer.dt_bias": init[w + "mixer.dt_bias"],
                b + "mixer.A_log": np.log(-init[w + "mixer.A"]),
                b + "mixer.D": init[w + "mixer.D"][:: model.blocks[i].mixer.c.head_dim],
                b + "mixer.out_proj.weight": init[w + "mixer.out_proj.weight_t"].T,
                b + "moe.router.weight": init[w + "moe.router.weight_t"].T,
                b + "moe.w1": init[w + "moe.fc1"].transpose(2, 0, 1).reshape(d, e * d_ff),
                b + "moe.b1": init[w + "moe.fc1_bias"].reshape(e * d_ff),
                b + "moe.w2": init[w + "moe.fc2"].transpose(0, 2, 1).reshape(e * d_ff, d),
                b + "moe.b2": init[w + "moe.fc2_bias"],
            }
        )
    state = model.state_dict()
    missing = [k for k in state if k not in sd and k != "head.weight"]
    if missing:
        raise FinetuneError(f"{folder}/model.onnx: no weights for {', '.join(missing[:5])}")
    sd["head.weight"] = sd["embed.weight"]  # tied
    model.load_state_dict({k: torch.tensor(np.ascontiguousarray(v), dtype=state[k].dtype) for k, v in sd.items()})
    tok = CharTokenizer.load(folder / "tokenizer.json")
    check_golden(model, folder)
    ckpt = {"config": config.to_dict(), "chars": tok.itos[1:], "seconds": 0.0, "step": 0}
    return model, tok, ckpt


def check_golden(model, folder: Path) -> None:
    """The weights read back must give the folder's recorded PyTorch logits (else the mapping is wrong)."""
    golden = json.loads((folder / "golden.json").read_text())
    model.eval()
    model.set_sparse_moe(False)
    with torch.no_grad():
        logits, _ = model(torch.tensor([golden["input_ids"]]))
    diff = float((logits[0] - torch.tensor(golden["logits"])).abs().max())
    if diff > max(golden.get("atol", 1e-4), 1e-4):
        raise FinetuneError(f"{folder}: weights read from model.onnx differ from golden.json (max |diff| {diff:.2e})")


def read_feedback(path: Path) -> tuple[list[str], dict]:
    """Training texts from an export: accepted (+1) prompt + text, corrected prompt + correction."""
    if not path.is_file():
        raise FinetuneError(f"feedback file not found: {path} (write one with `itera fleet feedback --export FILE`)")
    samples, counts = [], {"ratings": 0, "accepted": 0, "corrected": 0, "unused": 0}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            rating, prompt, text = int(r["rating"]), str(r["prompt"]), str(r["text"])
            correction = r.get("correction")
        except (ValueError, KeyError, TypeError) as e:
            raise FinetuneError(
                f"{path}:{n}: not a feedback record ({e}); export it with `itera fleet feedback --export`"
            ) from None
        counts["ratings"] += 1
        if correction:
            samples.append(prompt + str(correction))
            counts["corrected"] += 1
        elif rating > 0:
            samples.append(prompt + text)
            counts["accepted"] += 1
        else:
            counts["unused"] += 1  # a bad rating without a correction says what not to do, not what to do
    if not samples:
        raise FinetuneError(f"{path}: no accepted or corrected samples among {counts['ratings']} ratings")
    return samples, counts


def nats_per_char(model, tok, texts: list[str]) -> float:
    """Mean nats per predicted character over the texts (each scored from its own start)."""
    model.eval()
    model.set_sparse_moe(False)
    total, count = 0.0, 0
    with torch.no_grad():
        for t in texts:
            ids = tok.encode(t)
            if len(ids) < 2:
                continue
            logits, _ = model(torch.tensor([ids[:-1]]))
            total += float(F.cross_entropy(logits[0], torch.tensor(ids[1:]), reduction="sum"))
            count += len(ids) - 1
    return total / max(count, 1)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--feedback", type=Path, required=True, help="JSON lines from `itera fleet feedback --export`")
    p.add_argument("--base", type=Path, required=True, help="the model folder to continue from")
    p.add_argument("--checkpoint", type=Path, help="the base's training checkpoint (needed for a Transformer)")
    p.add_argument("--out", type=Path, help="the new model folder (default: <base>-ft)")
    p.add_argument("--data", type=Path, default=None, help="datasets folder (default: ITERA_DATASETS, else data/)")
    # Defaults measured on itera-lite-micro (docs/models.md): 200 steps at 1e-4 with half of each batch
    # from 3 samples memorised them and cost 0.078 nats/char held out; these stayed within 0.02.
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--lr", type=float, default=5e-5, help="small: the base's final rate was 3e-4")
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--mix", type=float, default=0.1, help="share of each batch from the feedback samples (at least one)")
    p.add_argument(
        "--budget", type=float, default=0.02, help="largest held-out nats/char increase accepted (else nothing is written)"
    )
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print the outcome as JSON on stdout")
    return p.parse_args(argv)


def finetune(args) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data_dir = args.data or datasets_dir()
    samples, counts = read_feedback(args.feedback)
    if args.checkpoint:
        model, tok, base_ckpt = load_checkpoint(args.checkpoint)
    else:
        model, tok, base_ckpt = load_itera_lite_folder(args.base)
    parent = json.loads((args.base / "itera.json").read_text())
    train_text, _ = split_train_val(read_text(data_dir / TRAIN_FILE))
    train = torch.tensor(tok.encode(train_text), dtype=torch.long)
    corpus = "\n\n".join(samples) + "\n\n"
    fb_ids = tok.encode(corpus)
    while len(fb_ids) < args.seq_len + 2:  # short feedback: repeat it to fill a window
        fb_ids = fb_ids + fb_ids
    fb = torch.tensor(fb_ids, dtype=torch.long)

    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    before = {r["dataset"]: r for r in evaluate(model, tok, data_dir, base_ckpt, log=log)}
    fb_before = nats_per_char(model, tok, samples)

    model.train()
    model.set_sparse_moe(True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed)
    n_fb = max(1, min(args.batch - 1, round(args.batch * args.mix)))
    t0 = time.time()
    for _ in range(args.steps):
        xa, ya = get_batch(train, args.batch - n_fb, args.seq_len, gen)
        xb, yb = get_batch(fb, n_fb, min(args.seq_len, len(fb) - 2), gen)
        loss = 0.0
        for x, y, share in ((xa, ya, args.batch - n_fb), (xb, yb, n_fb)):
            logits, _ = model(x)
            hard = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            loss = loss + (hard + AUX_LOSS_WEIGHT * getattr(model, "aux_loss", 0.0)) * share / args.batch
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    seconds = time.time() - t0

    after = {r["dataset"]: r for r in evaluate(model, tok, data_dir, base_ckpt, log=log)}
    fb_after = nats_per_char(model, tok, samples)
    held_before, held_after = before[HELD_OUT]["nats_per_token"], after[HELD_OUT]["nats_per_token"]
    outcome = {
        "base": str(args.base),
        "feedback": {**counts, "file": str(args.feedback), "sha256": hashlib.sha256(args.feedback.read_bytes()).hexdigest()},
        "feedback_nats_per_char": {"before": round(fb_before, 6), "after": round(fb_after, 6)},
        "held_out_nats_per_char": {"before": held_before, "after": held_after, "budget": args.budget},
        "out_of_domain": {
            k: {"before": before[k]["nats_per_token"], "after": after[k]["nats_per_token"]}
            for k in after
            if k != HELD_OUT
        },
        "steps": args.steps,
        "seconds": round(seconds, 1),
        "written": None,
    }
    if held_after - held_before > args.budget:
        outcome["refused"] = (
            f"held-out nats/char {held_before:.4f} -> {held_after:.4f} is worse than the budget {args.budget}; "
            "nothing written (lower --lr or --steps, raise --mix toward the original data, or raise --budget)"
        )
        return outcome

    out = args.out or args.base.with_name(args.base.name + "-ft")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt_path = Path(tmp) / "finetuned.pt"
        torch.save(
            {
                "config": model.config.to_dict(),
                "chars": tok.itos[1:],
                "model": model.state_dict(),
                "step": base_ckpt.get("step", 0) + args.steps,
                "seconds": base_ckpt.get("seconds", 0.0) + seconds,
                "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "command": " ".join(["/usr/bin/python3", "tools/train/finetune.py", *sys.argv[1:]]),
                "git_commit": git_commit(),
            },
            ckpt_path,
        )
        export_folder(ckpt_path, out, out.name, f"{parent.get('name', args.base.name)} fine-tuned on feedback")
    card = json.loads((out / "itera.json").read_text())
    card["evaluation"] = list(after.values())
    card["parent"] = {
        "id": parent.get("id", args.base.name),
        "folder": str(args.base),
        "sha256": hashlib.sha256((args.base / "model.onnx").read_bytes()).hexdigest(),
        "weights": "its training checkpoint" if args.checkpoint else "read back from its model.onnx (checked against golden.json)",
    }
    card["finetune"] = {k: v for k, v in outcome.items() if k not in ("written", "base")} | {
        "lr": args.lr,
        "mix": args.mix,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "data": str(data_dir),
    }
    (out / "itera.json").write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    outcome["written"] = str(out)
    return outcome


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        outcome = finetune(args)
    except (FinetuneError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(outcome, indent=2))
    h = outcome["held_out_nats_per_char"]
    f = outcome["feedback_nats_per_char"]
    print(
        f"feedback nats/char {f['before']:.4f} -> {f['after']:.4f}; held-out {h['before']:.4f} -> {h['after']:.4f} "
        f"(budget +{h['budget']})",
        file=sys.stderr,
    )
    if outcome.get("refused"):
        print(f"refused: {outcome['refused']}", file=sys.stderr)
        return 3
    print(f"wrote {outcome['written']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
