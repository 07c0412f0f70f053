"""Fine-tuning on feedback (finetune.py): weights read back from model.onnx, loss on the corrected texts
falls, held-out loss within the budget, the card records parent and feedback, a worse model is refused."""

import json

import pytest

import finetune
import train
from export import export_folder

TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n\n"
) * 30
CORRECTION = "All:\nSpeak, we are resolved to die, not famish."


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    (data / "tinyshakespeare.txt").write_text(TEXT, encoding="utf-8")
    (data / "wikitext-2").mkdir()
    (data / "wikitext-2" / "test.txt").write_text(" = Valkyria = \n The game began in 2010 . \n" * 20)
    (data / "tinystories-sample.txt").write_text("Once upon a time there was a little cat.\n" * 20)
    root = tmp_path_factory.mktemp("base")
    assert train.main(
        ["--model", "test-ssm", "--data", str(data), "--out", str(root / "ck"), "--steps", "20", "--batch", "4",
         "--seq-len", "32", "--warmup", "1", "--eval-every", "100", "--eval-batches", "1", "--quiet"]
    ) == 0
    base = export_folder(root / "ck" / "final.pt", root / "base", "base", "base")
    feedback = root / "feedback.jsonl"
    records = [
        {"rating": -1, "prompt": "First Citizen:\n", "text": "Sp", "correction": CORRECTION},
        {"rating": 1, "prompt": "All:\n", "text": "Speak, speak.", "correction": None},
        {"rating": -1, "prompt": "All:\n", "text": "zz", "correction": None},
    ]
    feedback.write_text("".join(json.dumps({"device": "d", "generation_id": f"gen-{i}", **r}) + "\n" for i, r in enumerate(records)))
    return data, base, feedback


def run(data, base, feedback, out, *extra):
    return finetune.main(
        ["--feedback", str(feedback), "--base", str(base), "--out", str(out), "--data", str(data), "--steps", "40",
         "--batch", "4", "--seq-len", "32", "--lr", "3e-3", "--json", *extra]
    )


def test_finetune_lowers_the_loss_on_the_corrections_within_the_held_out_budget(setup, tmp_path, capsys):
    data, base, feedback = setup
    # The base is read back from model.onnx alone (no checkpoint) and must reproduce golden.json.
    model, tok, _ = finetune.load_itera_lite_folder(base)
    assert all(c in tok.stoi for c in CORRECTION)
    corrected_before = finetune.nats_per_char(model, tok, ["First Citizen:\n" + CORRECTION])

    assert run(data, base, feedback, tmp_path / "ft", "--budget", "0.25") == 0
    outcome = json.loads(capsys.readouterr().out)
    assert outcome["feedback"]["corrected"] == 1 and outcome["feedback"]["accepted"] == 1
    assert outcome["feedback"]["unused"] == 1
    fb = outcome["feedback_nats_per_char"]
    assert fb["after"] < fb["before"]
    held = outcome["held_out_nats_per_char"]
    assert held["after"] - held["before"] <= 0.25

    card = json.loads((tmp_path / "ft" / "itera.json").read_text())
    assert card["parent"]["id"] == "base" and len(card["parent"]["sha256"]) == 64
    assert card["finetune"]["feedback"]["corrected"] == 1
    assert {e["dataset"] for e in card["evaluation"]} == {"tinyshakespeare-val", "wikitext-2-test", "tinystories-sample"}
    # The exported folder holds the fine-tuned weights: its corrected text is more likely than the base's.
    tuned, tok2, _ = finetune.load_itera_lite_folder(tmp_path / "ft")
    assert finetune.nats_per_char(tuned, tok2, ["First Citizen:\n" + CORRECTION]) < corrected_before


def test_a_model_worse_than_the_budget_is_refused_and_nothing_is_written(setup, tmp_path, capsys):
    data, base, feedback = setup
    # A learning rate far too large wrecks the model: held-out nats/char rise past a zero budget.
    assert run(data, base, feedback, tmp_path / "ft", "--lr", "1.0", "--budget", "0") == 3
    assert "refused" in json.loads(capsys.readouterr().out)
    assert not (tmp_path / "ft").exists()


def test_bad_feedback_is_one_clear_error(setup, tmp_path, capsys):
    data, base, _ = setup
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"rating": 1}\n')
    assert run(data, base, bad, tmp_path / "ft") == 2
    assert "bad.jsonl:1: not a feedback record" in capsys.readouterr().err
    only_bad = tmp_path / "neg.jsonl"
    only_bad.write_text(json.dumps({"rating": -1, "prompt": "a", "text": "b", "correction": None}) + "\n")
    assert run(data, base, only_bad, tmp_path / "ft") == 2
    assert "no accepted or corrected samples" in capsys.readouterr().err
