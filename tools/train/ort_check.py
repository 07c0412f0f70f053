"""Parity between PyTorch and the exported ONNX graph run by onnxruntime-node (ort_run.mjs).

check_folder() runs one sequence three ways through ONNX Runtime — all tokens at once, one token at a
time with state, and in uneven chunks with state in — and compares logits and final states with the
PyTorch full-sequence forward.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def ort_run(model_path: Path, ids: list[list[int]], chunks: list[int], state_shapes: dict) -> dict:
    return ort_run_many([(model_path, ids, chunks, state_shapes)])[0]


def ort_run_many(jobs: list[tuple]) -> list[dict]:
    """Run several (model_path, ids, chunks, state_shapes) jobs in one Node process."""
    reqs = [{"model": str(m), "ids": i, "chunks": c, "state": s} for m, i, c, s in jobs]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(reqs, f)
    try:
        out = subprocess.run(
            ["node", str(HERE / "ort_run.mjs"), f.name], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout
    finally:
        Path(f.name).unlink()
    results = []
    for res in json.loads(out):
        logits = np.asarray(res["logits"]["data"], dtype=np.float32).reshape(res["logits"]["dims"])
        state = {k: np.asarray(v["data"], dtype=np.float32).reshape(v["dims"]) for k, v in res["state"].items()}
        results.append({"logits": logits, "state": state})
    return results


def initial_state_shapes(model, batch: int = 1) -> dict:
    return {n: list(t.shape) for n, t in zip(model.state_names(), model.initial_state(batch))}


@torch.no_grad()
def check_model_file(model, model_path: Path, ids: list[int], chunkings: dict[str, list[int]]) -> dict:
    """Max |diff| of logits and final states between PyTorch and ONNX for each chunking."""
    model.eval()
    model.set_sparse_moe(False)
    ref_logits, ref_state = model(torch.tensor([ids]))
    ref_state = {n: s.numpy() for n, s in zip(model.state_names(), ref_state)}
    report = {}
    shapes = initial_state_shapes(model)
    outs = ort_run_many([(model_path, [ids], chunks, shapes) for chunks in chunkings.values()])
    for label, out in zip(chunkings, outs):
        logit_diff = float(np.abs(out["logits"] - ref_logits.numpy()).max())
        state_diff = max(float(np.abs(out["state"][n] - ref_state[n]).max()) for n in ref_state)
        report[label] = {"logits": logit_diff, "state": state_diff}
    return report


def standard_chunkings(n: int) -> dict[str, list[int]]:
    return {"all at once": [n], "one token at a time": [1] * n, "chunks 1+7+(n-8)": [1, 7, n - 8]}


PARITY_ATOL = 1e-4


def verify_in_onnxruntime(model, model_path: Path, tokens: int = 24) -> dict:
    """Refuse an exported graph that onnxruntime cannot load or that does not compute the PyTorch function.

    The check onnx.checker cannot make for onnxruntime's contrib operators: a fixed token sequence run
    all at once, step by step and in chunks, logits and states within PARITY_ATOL of PyTorch.
    """
    ids = [(7 * i + 3) % model.config.vocab_size for i in range(tokens)]
    try:
        report = check_model_file(model, model_path, ids, standard_chunkings(tokens))
    except subprocess.CalledProcessError as e:
        lines = (e.stderr or "").strip().splitlines()
        reason = next((line for line in lines if line.startswith("Error")), lines[-1] if lines else "no output")
        raise ValueError(f"onnxruntime could not run {model_path}: {reason}") from e
    worst = max(max(r.values()) for r in report.values())
    if worst > PARITY_ATOL:
        raise ValueError(f"{model_path.name} differs from PyTorch by {worst:.3g} (> {PARITY_ATOL}): {report}")
    return report


def main(argv=None) -> int:
    import argparse
    import sys

    sys.path.insert(0, str(HERE))
    from data import DEFAULT_DATA_DIR, TRAIN_FILE, read_text, split_train_val
    from train import load_checkpoint

    p = argparse.ArgumentParser(description="max |diff| between a checkpoint and its exported model folder")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("folder", type=Path)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--tokens", type=int, default=64)
    args = p.parse_args(argv)
    model, tok, _ = load_checkpoint(args.checkpoint)
    ids = tok.encode(split_train_val(read_text(args.data / TRAIN_FILE))[1][-args.tokens :])
    report = check_model_file(model, args.folder / "model.onnx", ids, standard_chunkings(len(ids)))
    print(json.dumps(report, indent=2))
    worst = max(max(r.values()) for r in report.values())
    return 0 if worst <= 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
