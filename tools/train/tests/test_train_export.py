"""Training smoke run, resume, bad input, export with state, and ONNX Runtime parity with PyTorch."""

import json
import math

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import evaluate
import train
from export import export_folder, io_names
from ort_check import initial_state_shapes, ort_run_many, standard_chunkings

TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n\n"
) * 30


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    (d / "tinyshakespeare.txt").write_text(TEXT, encoding="utf-8")
    return d


def run_train(data_dir, out, model, steps, *extra):
    return train.main(
        ["--model", model, "--data", str(data_dir), "--out", str(out), "--steps", str(steps), "--batch", "2",
         "--seq-len", "32", "--warmup", "1", "--eval-every", "2", "--eval-batches", "1", "--quiet", *extra]
    )


@pytest.fixture(scope="module")
def checkpoints(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    for model in ("test-ssm", "test-transformer"):
        assert run_train(data_dir, root / model, model, 4) == 0
    return root


def test_training_lowers_the_loss_and_resumes_exactly(data_dir, tmp_path, checkpoints):
    ck = torch.load(checkpoints / "test-ssm" / "final.pt")
    assert ck["step"] == 4 and ck["tokens_seen"] == 4 * 2 * 32
    assert ck["history"][-1]["val_loss"] < np.log(ck["config"]["vocab_size"])
    # 2 steps, stop, resume to 4: the same weights as 4 steps straight (sampler and RNG restored).
    assert run_train(data_dir, tmp_path / "r", "test-ssm", 2) == 0
    assert run_train(data_dir, tmp_path / "r", "test-ssm", 4) == 0
    resumed = torch.load(tmp_path / "r" / "final.pt")["model"]
    for k, v in ck["model"].items():
        assert torch.equal(v, resumed[k]), k


def test_distillation_runs_from_a_teacher_checkpoint(data_dir, tmp_path, checkpoints):
    teacher = checkpoints / "test-ssm" / "final.pt"
    assert run_train(data_dir, tmp_path / "d", "test-ssm", 2, "--teacher", str(teacher)) == 0
    assert torch.load(tmp_path / "d" / "final.pt")["args"]["teacher"] == str(teacher)


@pytest.mark.parametrize(
    "content,message",
    [(None, "not found"), (b"", "empty"), (b"abc\xff\xfedef", "not UTF-8")],
)
def test_bad_dataset_is_one_clear_error(tmp_path, capsys, content, message):
    if content is not None:
        (tmp_path / "tinyshakespeare.txt").write_bytes(content)
    assert run_train(tmp_path, tmp_path / "out", "test-ssm", 1) == 2
    err = capsys.readouterr().err
    assert message in err and "tinyshakespeare.txt" in err
    assert not (tmp_path / "out").exists()


def test_sequence_longer_than_the_context_is_refused(data_dir, tmp_path, capsys):
    assert train.main(["--model", "test-transformer", "--data", str(data_dir), "--out", str(tmp_path / "o"),
                       "--seq-len", "300", "--quiet"]) == 2
    assert "context" in capsys.readouterr().err


def test_resuming_with_another_model_is_refused(data_dir, tmp_path, checkpoints, capsys):
    import shutil

    shutil.copytree(checkpoints / "test-ssm", tmp_path / "c")
    assert run_train(data_dir, tmp_path / "c", "test-transformer", 1) == 2
    assert "different model configuration" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["test-ssm", "test-transformer"])
def test_export_matches_pytorch_in_onnx_runtime(checkpoints, tmp_path, name):
    folder = export_folder(checkpoints / name / "final.pt", tmp_path / name, name, name)
    model, tok, _ = train.load_checkpoint(checkpoints / name / "final.pt")
    model.eval()
    model.set_sparse_moe(False)
    graph = onnx.load(str(folder / "model.onnx"))
    inputs, outputs = io_names(model)
    assert [i.name for i in graph.graph.input] == inputs
    assert [o.name for o in graph.graph.output] == outputs
    assert graph.opset_import[0].version <= 17
    config = json.loads((folder / "genai_config.json").read_text())["model"]
    assert config["decoder"]["filename"] == "model.onnx" and config["vocab_size"] == tok.vocab_size
    for template in [*config["decoder"]["inputs"].values(), *config["decoder"]["outputs"].values()]:
        names = [template % i for i in range(model.config.n_layers)] if "%d" in template else [template]
        assert set(names) <= set(inputs + outputs), template
    card = json.loads((folder / "itera.json").read_text())
    assert card["schema"] == "itera.model/v1" and card["parameters"] > 0 and card["export"]["opset"] == 17

    ids = tok.encode((TEXT * 2)[:64])
    chunkings = standard_chunkings(64)
    jobs = [(folder / "model.onnx", [ids], c, initial_state_shapes(model)) for c in chunkings.values()]
    # Batch 2: two different sequences side by side (the state rows must not mix).
    ids2 = tok.encode((TEXT * 2)[100:164])
    jobs.append((folder / "model.onnx", [ids, ids2], [1, 7, 56], initial_state_shapes(model, 2)))
    # Every MoE expert must survive export: perturbing any one expert's weights (its slice of the
    # MoE op's fc1 initializer [E, d_ff, d_model]) changes the output.
    perturbed = []
    if name == "test-ssm":
        c = model.config
        for layer in range(c.n_layers):
            for e in range(c.n_experts):
                g = onnx.load(str(folder / "model.onnx"))
                (moe,) = [n for n in g.graph.node if n.op_type == "MoE" and f"blocks.{layer}/" in n.name]
                init = next(t for t in g.graph.initializer if t.name == moe.input[2])
                w = numpy_helper.to_array(init).copy()
                w[e] += 0.5
                init.CopyFrom(numpy_helper.from_array(w, init.name))
                path = tmp_path / f"perturbed-{layer}-{e}.onnx"
                onnx.save(g, str(path))
                perturbed.append((layer, e))
                jobs.append((path, [ids], [64], initial_state_shapes(model)))
    results = ort_run_many(jobs)
    with torch.no_grad():
        ref_logits, ref_state = model(torch.tensor([ids]))
        ref2_logits, ref2_state = model(torch.tensor([ids, ids2]))
    for label, out in zip(chunkings, results):
        assert np.abs(out["logits"] - ref_logits.numpy()).max() <= 1e-4, label
        for n, s in zip(model.state_names(), ref_state):
            assert np.abs(out["state"][n] - s.numpy()).max() <= 1e-4, (label, n)
    batch2 = results[len(chunkings)]
    assert np.abs(batch2["logits"] - ref2_logits.numpy()).max() <= 1e-4
    for n, s in zip(model.state_names(), ref2_state):
        assert np.abs(batch2["state"][n] - s.numpy()).max() <= 1e-4, ("batch 2", n)
    base = results[0]["logits"]
    for (layer, e), out in zip(perturbed, results[len(chunkings) + 1 :]):
        assert np.abs(out["logits"] - base).max() > 1e-4, f"expert {e} of layer {layer} is not in the graph"

    golden = json.loads((folder / "golden.json").read_text())
    assert golden["input_ids"] == tok.encode(golden["prompt"])
    with torch.no_grad():
        prompt_logits, _ = model(torch.tensor([golden["input_ids"]]))
    assert np.abs(np.array(golden["logits"]) - prompt_logits[0].numpy()).max() < 1e-5
    assert len(golden["greedy_ids"]) == 32


def test_itera_lite_graph_is_onnxruntime_fused_operators(checkpoints, tmp_path):
    """18 nodes per layer: the fused contrib ops, no shape arithmetic, the MoE fed 3-D; state in the ops' layout."""
    folder = export_folder(checkpoints / "test-ssm" / "final.pt", tmp_path / "ssm", "ssm", "ssm")
    model, _, _ = train.load_checkpoint(checkpoints / "test-ssm" / "final.pt")
    c = model.config
    graph = onnx.load(str(folder / "model.onnx"))
    assert {(o.domain, o.version) for o in graph.opset_import} == {("", 17), ("com.microsoft", 1)}
    assert graph.ir_version == 8
    layer0 = [n.op_type for n in graph.graph.node if n.name.startswith("/model/blocks.0/")]
    assert sorted(layer0) == sorted(
        ["SimplifiedLayerNormalization", "MatMul", "Split", "CausalConvWithState", "Split", "LinearAttentionGate",
         "MatMul", "Mul", "LinearAttention", "Mul", "Add", "QuickGelu", "Mul", "MatMul",
         "SkipSimplifiedLayerNormalization", "MatMul", "Reshape", "MoE"]
    )
    ops = [n.op_type for n in graph.graph.node]
    assert len(ops) == 18 * c.n_layers + 3 and ops.count("Reshape") == c.n_layers and "Shape" not in ops
    moe = next(n for n in graph.graph.node if n.op_type == "MoE")
    assert moe.input[0] == "blocks.0.norm2"  # the 3-D norm output itself, no Reshape around the MoE
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.graph.input}
    assert dims["past_key_values.1.conv_state"] == ["batch", c.d_conv - 1, c.conv_dim]
    assert dims["past_key_values.1.recurrent_state"] == ["batch", c.n_heads, c.d_state, c.head_dim]
    assert [list(t.shape) for t in model.initial_state(1)[:2]] == [[1, *dims[n][1:]] for n in list(dims)[1:3]]
    card = json.loads((folder / "itera.json").read_text())
    assert card["export"]["nodes_per_layer"] == 18 and "onnxruntime >= 1.30" in card["export"]["runtime"]


def _d_off_by_one_percent(g):
    init = next(t for t in g.graph.initializer if t.name == "model.blocks.1.mixer.D")
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.01, init.name))


def _moe_unknown_to_onnxruntime(g):
    next(n for n in g.graph.node if n.op_type == "MoE").op_type = "SparseMixtureOfExperts"


@pytest.mark.parametrize(
    "spoil,message",
    [(_d_off_by_one_percent, "differs from PyTorch by"), (_moe_unknown_to_onnxruntime, "onnxruntime could not run")],
)
def test_a_graph_onnxruntime_refuses_or_that_differs_from_pytorch_is_refused_with_nothing_written(
    checkpoints, tmp_path, monkeypatch, spoil, message
):
    """onnx.checker cannot check contrib ops: the export's onnxruntime run is the check, and it must bite."""
    import export
    import onnx_graph

    def spoiled(model):
        g = onnx_graph.build_graph(model)
        spoil(g)
        return g

    monkeypatch.setattr(export, "build_graph", spoiled)
    with pytest.raises(ValueError, match=message):
        export_folder(checkpoints / "test-ssm" / "final.pt", tmp_path / "bad", "bad", "bad")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["test-ssm", "test-transformer"])
@torch.no_grad()
def test_evaluation_scores_every_token_after_the_first_once(checkpoints, name):
    model, tok, _ = train.load_checkpoint(checkpoints / name / "final.pt")
    model.eval()
    ids = tok.encode(TEXT[:700])
    nats, n = evaluate.nll_sum(model, ids)
    assert n == len(ids) - 1
    if name == "test-ssm":  # state carried: the same as one forward over the whole text
        logits, _ = model(torch.tensor([ids]))
        expect = torch.nn.functional.cross_entropy(logits[0, :-1].double(), torch.tensor(ids[1:]), reduction="sum")
    else:  # target j is scored in the latest window (start a multiple of 128) that holds it with the most context
        expect, windows = 0.0, {}
        for j in range(1, len(ids)):
            begin = 0 if j < 256 else ((j - 256) // 128 + 1) * 128
            if begin not in windows:
                windows[begin] = model(torch.tensor([ids[begin : begin + 256]]))[0][0].double()
            row = windows[begin][j - begin - 1]
            expect += float(torch.nn.functional.cross_entropy(row[None], torch.tensor([ids[j]])))
    assert abs(nats - float(expect)) < 1e-3


@torch.no_grad()
def test_rotary_transformer_matches_pytorch_with_a_past_and_beyond_position_256(checkpoints, tmp_path):
    """No position table: the export runs at any position. 300 tokens, prefilled then stepped across
    position 256 (the old learned table's size) with a KV cache in, equal PyTorch's full forward."""
    ck = checkpoints / "test-transformer" / "final.pt"
    folder = export_folder(ck, tmp_path / "rope", "rope", "rope")
    model, tok, _ = train.load_checkpoint(ck)
    model.eval()
    genai = json.loads((folder / "genai_config.json").read_text())
    config = genai["model"]
    assert config["context_length"] == model.config.context_length
    assert genai["search"]["max_length"] == 32  # default generation stays within the training sequences
    card = json.loads((folder / "itera.json").read_text())["architecture"]
    assert card["positions"].startswith("rotary") and card["trained_sequence_length"] == 32
    assert not any(t.name.endswith("pos.weight") for t in onnx.load(str(folder / "model.onnx")).graph.initializer)
    ids = tok.encode((TEXT * 2)[:300])
    chunkings = ([300], [250, 1, 1, 1, 1, 1, 1, 44], [200, 60, 40])
    outs = ort_run_many([(folder / "model.onnx", [ids], ch, initial_state_shapes(model)) for ch in chunkings])
    ref, state = model(torch.tensor([ids]))
    for chunks, out in zip(chunkings, outs):
        assert np.abs(out["logits"] - ref.numpy()).max() <= 1e-4, chunks
        for n, s in zip(model.state_names(), state):
            assert out["state"][n].shape[2] == 300
            assert np.abs(out["state"][n] - s.numpy()).max() <= 1e-4, (chunks, n)


def test_learned_position_checkpoint_is_refused_with_the_reason(checkpoints, tmp_path, capsys):
    old = torch.load(checkpoints / "test-transformer" / "final.pt")
    old["model"]["pos.weight"] = torch.zeros(256, old["config"]["d_model"])
    torch.save(old, tmp_path / "old.pt")
    import export

    assert export.main([str(tmp_path / "old.pt"), str(tmp_path / "out")]) == 2
    assert "learned positions" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert evaluate.main([str(tmp_path / "old.pt")]) == 2
    assert "retrain" in capsys.readouterr().err


def test_transformer_is_also_evaluated_in_windows_longer_than_its_training_sequences():
    from model import CONFIGS, build_model

    tiny = build_model(CONFIGS["transformer-tiny"](66))
    assert [(d, w) for d, _, _, w in evaluate.suite_for(tiny, {"args": {"seq_len": 128}})] == [
        ("tinyshakespeare-val", 128),
        ("wikitext-2-test", 128),
        ("tinystories-sample", 128),
        ("tinyshakespeare-val-window-512", 512),
        ("tinyshakespeare-val-window-2048", 2048),
    ]
    assert "sliding windows of 2048 with stride 1024" in evaluate.method_text(tiny, 2048)
    # No window beyond the context the model declares; Itera-Lite carries its state instead.
    small = build_model(CONFIGS["test-transformer"](66))
    assert [w for *_, w in evaluate.suite_for(small, {"args": {"seq_len": 32}})] == [32, 32, 32]
    assert all(w is None for *_, w in evaluate.suite_for(build_model(CONFIGS["test-ssm"](66)), None))


def test_transformer_with_fused_past_caches_matches_pytorch(checkpoints, tmp_path, capsys):
    """The older GPT-2 layout (past_N -> present_N, key and value stacked) for runtime fixtures."""
    ck = checkpoints / "test-transformer" / "final.pt"
    folder = export_folder(ck, tmp_path / "fused", "fused", "fused", fused=True)
    model, tok, _ = train.load_checkpoint(ck)
    model.eval()
    c = model.config
    graph = onnx.load(str(folder / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask", "position_ids", "past_0", "past_1"]
    assert [o.name for o in graph.output] == ["logits", "present_0", "present_1"]
    decoder = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
    assert decoder["inputs"]["past_names"] == "past_%d" and decoder["outputs"]["present_names"] == "present_%d"
    ids = tok.encode(TEXT[:40])
    shapes = {f"past_{i}": [2, 1, c.n_heads, 0, c.head_size] for i in range(c.n_layers)}
    outs = ort_run_many([(folder / "model.onnx", [ids], ch, shapes) for ch in ([40], [1] * 40, [1, 7, 32])])
    with torch.no_grad():
        ref, state = model(torch.tensor([ids]))
    for out in outs:
        assert np.abs(out["logits"] - ref.numpy()).max() <= 1e-4
        for i in range(c.n_layers):
            fused = np.stack([state[2 * i].numpy(), state[2 * i + 1].numpy()])
            assert np.abs(out["state"][f"past_{i}"] - fused).max() <= 1e-4
    # Itera-Lite has no KV cache to fuse: refused with the reason.
    import export

    assert export.main([str(checkpoints / "test-ssm" / "final.pt"), str(tmp_path / "x"), "--kv-layout", "fused"]) == 2
    assert "Transformer only" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_only_replaces_one_card_entry_and_bits_per_char_counts_source_characters(checkpoints, tmp_path, capsys):
    """`<unk>` in the text is one token of 5 source characters; bits/char divides by source characters."""
    data = tmp_path / "data"
    (data / "wikitext-2").mkdir(parents=True)
    wiki = "<unk> = Robert <unk> = é 3 @-@ 4 .\n" * 40
    (data / "wikitext-2" / "test.txt").write_text(wiki, encoding="utf-8")
    ck = checkpoints / "test-ssm" / "final.pt"
    folder = tmp_path / "folder"
    folder.mkdir()
    old = [{"dataset": "tinyshakespeare-val", "nats_per_token": 1.5}, {"dataset": "wikitext-2-test", "tokens": 1}]
    seconds = round(torch.load(ck)["seconds"], 1)
    (folder / "itera.json").write_text(json.dumps({"training": {"seconds": seconds}, "evaluation": old}))
    assert evaluate.main([str(ck), str(folder), "--data", str(data), "--only", "wikitext-2-test"]) == 0
    card = json.loads((folder / "itera.json").read_text())
    assert card["evaluation"][0] == old[0]
    (rec,) = json.loads(capsys.readouterr().out)
    assert card["evaluation"][1] == rec and len(card["evaluation"]) == 2
    text = wiki[: int(len(wiki) * 0.1)]
    literal = text.count("<unk>")
    assert literal > 0 and text.startswith("<unk>")
    assert rec["tokens"] == len(text) - 4 * literal - 1
    assert rec["chars"] == len(text) - 5  # all but the first token's characters: a literal <unk>
    nats = rec["nats_per_token"] * rec["tokens"]
    assert abs(rec["bits_per_char"] - nats / rec["chars"] / math.log(2)) < 1e-4
    assert f"({literal} times)" in rec["note"]
    vocab = train.load_checkpoint(ck)[1].stoi
    assert rec["unk_chars"] == sum(1 for c in text.replace("<unk>", "") if c not in vocab) > 0


@torch.no_grad()
def test_context_profile_groups_every_target_of_the_full_windows_by_tokens_seen(checkpoints, data_dir, capsys):
    import context_profile

    model, tok, _ = train.load_checkpoint(checkpoints / "test-transformer" / "final.pt")
    ids = tok.encode(TEXT[:700])
    rows = context_profile.nats_by_position(model, ids, 300)
    assert [r["tokens_seen"] for r in rows] == ["1-64", "65-128", "129-256", "257-299"]
    assert [r["targets"] for r in rows] == [2 * 64, 2 * 64, 2 * 128, 2 * 43]  # two full windows, 299 targets each
    # The weighted mean is the mean loss of the two windows' targets.
    total = sum(r["nats_per_token"] * r["targets"] for r in rows)
    expect = 0.0
    for begin in (0, 300):
        logits, _ = model(torch.tensor([ids[begin : begin + 300]]))
        target = torch.tensor(ids[begin + 1 : begin + 300])
        expect += float(torch.nn.functional.cross_entropy(logits[0, :-1].double(), target, reduction="sum"))
    assert abs(total - expect) < 1e-2
    with pytest.raises(ValueError, match="fewer than one window"):
        context_profile.nats_by_position(model, ids[:100], 300)
    assert context_profile.main([str(checkpoints / "test-transformer" / "final.pt"), "--window", "1"]) == 2
    assert "--window" in capsys.readouterr().err


def test_context_profile_attention_window_is_for_the_transformer_only(checkpoints, data_dir, capsys):
    import context_profile

    ssm = str(checkpoints / "test-ssm" / "final.pt")
    args = ["--data", str(data_dir), "--window", "64", "--attention-window", "8"]
    assert context_profile.main([ssm, *args]) == 2
    assert "Transformer only" in capsys.readouterr().err
    assert context_profile.main([str(checkpoints / "test-transformer" / "final.pt"), *args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["attention_window"] == 8 and out["rows"][0]["tokens_seen"] == "1-63"
