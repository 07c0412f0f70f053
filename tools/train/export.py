#!/usr/bin/env python3
"""Export a trained checkpoint as a model folder (docs/model-folder.md).

Writes model.onnx (one graph with a dynamic sequence axis: T = 1 is the step model, T > 1 the
multi-token prefill; state in, state out, named as DESIGN.md §3), genai_config.json, tokenizer.json,
itera.json (model card) and golden.json (PyTorch reference logits and greedy tokens). The folder is
written to a temporary path and renamed, so nothing half-written is left behind.

  /usr/bin/python3 tools/train/export.py tools/train/checkpoints/itera-lite-tiny/final.pt models/itera-lite-tiny
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import onnx
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lean import lean_file  # noqa: E402
from model import IteraLite, count_parameters, flops_per_token  # noqa: E402
from onnx_graph import build_graph, card_notes, check  # noqa: E402
from ort_check import verify_in_onnxruntime  # noqa: E402
from evaluate import training_window  # noqa: E402
from train import load_checkpoint  # noqa: E402

OPSET = 17
GOLDEN_PROMPT = "ROMEO:"
GOLDEN_STEPS = 32
GOLDEN_ATOL = 1e-4
# Itera-Lite has no positional limit (recurrent state); this is the generation default, not a bound.
ITERA_CONTEXT = 4096


class StepModel(nn.Module):
    """Flat positional signature for torch.onnx.export: (input_ids, [mask, positions,] *state)."""

    def __init__(self, model: nn.Module, fused: bool = False):
        super().__init__()
        self.model = model
        self.recurrent = isinstance(model, IteraLite)
        self.fused = fused

    def forward(self, input_ids, *rest):
        if self.recurrent:
            logits, state = self.model(input_ids, list(rest))
            return (logits, *state)
        attention_mask, position_ids, *state = rest
        if self.fused:  # past_N [2, batch, heads, past, head_size] = key and value stacked
            state = [t for past in state for t in (past[0], past[1])]
        logits, state = self.model(input_ids, state, attention_mask, position_ids)
        if self.fused:
            state = [torch.stack([state[i], state[i + 1]]) for i in range(0, len(state), 2)]
        return (logits, *state)


def io_names(model: nn.Module, fused: bool = False) -> tuple[list[str], list[str]]:
    if fused:
        n = model.config.n_layers
        states, presents = [f"past_{i}" for i in range(n)], [f"present_{i}" for i in range(n)]
    else:
        states = model.state_names()
        presents = [n.replace("past_key_values.", "present.", 1) for n in states]
    inputs = ["input_ids"] + ([] if isinstance(model, IteraLite) else ["attention_mask", "position_ids"]) + states
    return inputs, ["logits"] + presents


def dummy_inputs(model: nn.Module, seq: int = 3, past: int = 2, fused: bool = False) -> tuple:
    ids = torch.randint(0, model.config.vocab_size, (1, seq))
    if isinstance(model, IteraLite):
        return (ids, *model.initial_state(1))
    c = model.config
    state = [torch.randn(1, c.n_heads, past, c.head_size) for _ in range(2 * c.n_layers)]
    if fused:
        state = [torch.stack([state[i], state[i + 1]]) for i in range(0, len(state), 2)]
    mask = torch.ones(1, past + seq, dtype=torch.long)
    pos = torch.arange(past, past + seq).unsqueeze(0)
    return (ids, mask, pos, *state)


def export_onnx(model: nn.Module, path: Path, fused: bool = False) -> None:
    model.eval()
    if isinstance(model, IteraLite):
        # Itera-Lite is written directly as a graph of onnxruntime's fused contrib ops (onnx_graph.py);
        # onnx.checker cannot check those, so the graph is run in onnxruntime against PyTorch before use.
        graph = build_graph(model)
        check(graph)
        onnx.save(graph, str(path))
        verify_in_onnxruntime(model, path)
        return
    model.set_sparse_moe(False)  # dense: every expert is in the graph, gated by zeros when unselected
    inputs, outputs = io_names(model, fused)
    b, p = (1, 3) if fused else (0, 2)  # batch and past-sequence axes of the caches
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"}}
    if isinstance(model, IteraLite):
        for n in inputs[1:] + outputs[1:]:
            axes[n] = {0: "batch"}
    else:
        axes["attention_mask"] = {0: "batch", 1: "total_sequence"}
        axes["position_ids"] = {0: "batch", 1: "sequence"}
        for n in inputs[3:]:
            axes[n] = {b: "batch", p: "past_sequence"}
        for n in outputs[1:]:
            axes[n] = {b: "batch", p: "total_sequence"}
    # The tracer warns about constant tensors (the -inf mask fill, the attention bias): constants by design.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            StepModel(model, fused),
            dummy_inputs(model, fused=fused),
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
        )
    lean_file(path)
    onnx.checker.check_model(str(path))


SHAPE_OPS = {"Shape", "Gather", "Unsqueeze", "Concat", "Range", "Cast", "Squeeze"}


def graph_stats(path: Path, n_layers: int) -> dict:
    g = onnx.load(str(path)).graph
    ops = Counter(n.op_type for n in g.node)
    per_layer = Counter()
    for n in g.node:
        parts = n.name.split("/")
        if len(parts) > 3 and parts[2].startswith("blocks."):
            per_layer[parts[2]] += 1
    return {
        "nodes": len(g.node),
        "nodes_per_layer": round(sum(per_layer.values()) / max(1, len(per_layer)), 1),
        "nodes_outside_layers": len(g.node) - sum(per_layer.values()),
        "op_types": dict(sorted(ops.items(), key=lambda kv: -kv[1])),
    }


def genai_config(model: nn.Module, tok_vocab: int, context: int, fused: bool = False, max_length: int = 512) -> dict:
    c = model.config
    recurrent = isinstance(model, IteraLite)
    if recurrent:
        inputs = {
            "input_ids": "input_ids",
            "past_conv_names": "past_key_values.%d.conv_state",
            "past_recurrent_names": "past_key_values.%d.recurrent_state",
        }
        outputs = {
            "logits": "logits",
            "present_conv_names": "present.%d.conv_state",
            "present_recurrent_names": "present.%d.recurrent_state",
        }
        heads, head_size = c.n_heads, c.head_dim
    else:
        inputs = {
            "input_ids": "input_ids",
            "attention_mask": "attention_mask",
            "position_ids": "position_ids",
            "past_key_names": "past_key_values.%d.key",
            "past_value_names": "past_key_values.%d.value",
        }
        outputs = {
            "logits": "logits",
            "present_key_names": "present.%d.key",
            "present_value_names": "present.%d.value",
        }
        if fused:
            inputs = {k: v for k, v in inputs.items() if not k.startswith("past_")} | {"past_names": "past_%d"}
            outputs = {"logits": "logits", "present_names": "present_%d"}
        heads, head_size = c.n_heads, c.head_size
    decoder = {
        "filename": "model.onnx",
        "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
        "inputs": inputs,
        "outputs": outputs,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "head_size": head_size,
        "hidden_size": c.d_model,
    }
    if recurrent:
        decoder["layer_types"] = ["ssm_moe"] * c.n_layers
    return {
        "model": {
            # No end-of-text in a character corpus: id 0 (<unk>, never seen in training) stands in.
            "type": "itera-lite" if recurrent else "gpt2",
            "bos_token_id": 0,
            "eos_token_id": 0,
            "pad_token_id": 0,
            "vocab_size": tok_vocab,
            "context_length": context,
            "decoder": decoder,
        },
        "search": {
            "max_length": min(context, max_length),
            "min_length": 0,
            "do_sample": True,
            "temperature": 0.8,
            "top_k": 20,
            "top_p": 0.95,
            "repetition_penalty": 1.0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": False,
        },
    }


@torch.no_grad()
def golden(model: nn.Module, tok) -> dict:
    """Prompt logits from the full-sequence forward, then greedy tokens one step at a time with state."""
    model.eval()
    model.set_sparse_moe(False)
    ids = tok.encode(GOLDEN_PROMPT)
    x = torch.tensor([ids])
    logits, state = model(x)
    greedy, nxt = [], int(logits[0, -1].argmax())
    for _ in range(GOLDEN_STEPS):
        greedy.append(nxt)
        step_logits, state = model(torch.tensor([[nxt]]), state)
        nxt = int(step_logits[0, -1].argmax())
    return {
        "prompt": GOLDEN_PROMPT,
        "input_ids": ids,
        "logits": [[round(float(v), 6) for v in row] for row in logits[0]],
        "greedy_ids": greedy,
        "greedy_text": tok.decode(greedy),
        "atol": GOLDEN_ATOL,
    }


def model_card(model, tok, ckpt, model_id: str, name: str, stats: dict, evaluation: list, smoke: bool) -> dict:
    c = model.config
    # The Transformer's attention term grows with the context: the card's figure is at the training window.
    flops = flops_per_token(c, None if isinstance(model, IteraLite) else training_window(model, ckpt))
    arch = {"family": c.family, **{k: v for k, v in c.to_dict().items() if k != "family"}}
    if isinstance(model, IteraLite):
        arch.update(
            {
                "mixer": (
                    "Mamba-2-style selective SSM (scalar A per head, one B/C group); trained in the chunked SSD "
                    "form, exported as onnxruntime CausalConvWithState + LinearAttentionGate + LinearAttention (gated)"
                ),
                "ffn": (
                    f"MoE: {c.n_experts} SiLU experts, top-{c.top_k} softmax router, Switch load-balancing loss; "
                    "exported as one onnxruntime MoE op per layer (every expert an initializer of it)"
                ),
                "active_flops_per_token": flops["active"],
                "context": "unbounded (recurrent state); context_length in genai_config is a generation default",
            }
        )
    else:
        arch.update(
            {
                "positions": f"rotary (RoPE, rotate-half form, base {c.rope_base:g}): relative, no position table",
                "trained_sequence_length": training_window(model, ckpt),
                "context": c.context_length,
                "context_note": (
                    f"runs at any length up to context_length {c.context_length} (the KV cache bound); trained on "
                    f"{training_window(model, ckpt)}-token sequences, quality in longer windows is measured in evaluation"
                ),
                "flops_per_token_by_context": {
                    str(n): flops_per_token(c, n)["dense"] for n in (64, 128, 512, 2048) if n <= c.context_length
                },
            }
        )
    args = ckpt.get("args", {})
    training = {
        "command": ckpt.get("command"),
        "git_commit": ckpt.get("git_commit"),
        "seconds": round(ckpt["seconds"], 1),
        "steps": ckpt["step"],
        "tokens": ckpt.get("tokens_seen"),
        "batch": args.get("batch"),
        "seq_len": args.get("seq_len"),
        "lr": args.get("lr"),
        "seed": args.get("seed"),
        "device": f"cpu (x86-64, 2 cores shared with other jobs; the load varied between runs), torch threads {args.get('threads')}",
        "data": "tinyshakespeare.txt, first 90% of characters",
        "history": ckpt.get("history", []),
    }
    if args.get("teacher"):
        training["distilled_from"] = args["teacher"]
        training["kd_temperature"] = args.get("kd_temperature")
        training["kd_alpha"] = args.get("kd_alpha")
    if smoke:
        training["smoke_run"] = True
        training["note"] = "SMOKE RUN: a few steps only, for wiring tests; replaced by the real training run"
    return {
        "schema": "itera.model/v1",
        "id": model_id,
        "name": name,
        "version": "0.1.0" if not smoke else "0.0.1-smoke",
        "architecture": arch,
        "parameters": count_parameters(model),
        "flops_per_token": flops["dense"],
        "quantization": {"mode": "fp32"},
        "tokenizer": {"type": "char", "vocab_size": tok.vocab_size, "unk_token": "<unk>", "unk_id": 0},
        "evaluation": evaluation,
        "training": training,
        "export": {
            "opset": OPSET,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "files": ["model.onnx"],
            "graph": "one graph, dynamic sequence axis: T = 1 steps, T > 1 prefills; state in, state out",
            **stats,
        },
    }


def export_folder(
    ckpt_path: Path, out: Path, model_id: str, name: str, smoke: bool = False, fused: bool = False
) -> Path:
    model, tok, ckpt = load_checkpoint(ckpt_path)
    if fused and isinstance(model, IteraLite):
        raise ValueError("--kv-layout fused applies to the Transformer only (Itera-Lite has no KV cache)")
    out = Path(out)
    previous = json.loads((out / "itera.json").read_text()) if (out / "itera.json").is_file() else None
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if out.parent.exists() else None))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a model folder is ordinary data
        export_onnx(model, tmp / "model.onnx", fused)
        stats = graph_stats(tmp / "model.onnx", model.config.n_layers)
        tok.save(tmp / "tokenizer.json")
        context = ITERA_CONTEXT if isinstance(model, IteraLite) else model.config.context_length
        # The Transformer's default generation length stays within its training sequences: its rotary
        # positions run up to context_length, but beyond the trained length quality falls (docs/models.md).
        default_length = 512 if isinstance(model, IteraLite) else training_window(model, ckpt)
        config = genai_config(model, tok.vocab_size, context, fused, default_length)
        (tmp / "genai_config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "golden.json").write_text(json.dumps(golden(model, tok)) + "\n")
        # Keep evaluation figures measured earlier for the same weights (evaluate.py adds them).
        same = previous and previous.get("training", {}).get("seconds") == round(ckpt["seconds"], 1)
        evaluation = previous.get("evaluation", []) if same else []
        card = model_card(model, tok, ckpt, model_id, name, stats, evaluation, smoke)
        if not isinstance(model, IteraLite):
            card["export"]["kv_layout"] = "fused past_%d [2, batch, heads, past, head_size]" if fused else "separate"
        else:
            card["export"].update(card_notes(model))
        (tmp / "itera.json").write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("out", type=Path, help="model folder to write (replaced atomically)")
    p.add_argument("--id", help="model id (default: the folder name)")
    p.add_argument("--name", help="display name")
    p.add_argument("--smoke", action="store_true", help="mark the card as a smoke-run export")
    p.add_argument(
        "--kv-layout",
        choices=["separate", "fused"],
        default="separate",
        help="Transformer caches: past_key_values.N.key/value (Optimum, default) or fused past_N (older GPT-2 exports)",
    )
    args = p.parse_args(argv)
    if not args.checkpoint.is_file():
        print(f"error: checkpoint not found: {args.checkpoint} (train it with tools/train/train.py)", file=sys.stderr)
        return 2
    model_id = args.id or args.out.name
    try:
        out = export_folder(
            args.checkpoint, args.out, model_id, args.name or model_id, args.smoke, args.kv_layout == "fused"
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"folder": str(out), **graph_stats(out / "model.onnx", 1)}, indent=None)[:300])
    return 0


if __name__ == "__main__":
    sys.exit(main())
