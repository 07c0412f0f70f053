"""Character tokenizer: frequency order, <unk>, and the same ids from @huggingface/tokenizers in Node."""

import json
import subprocess

import pytest

from ort_check import REPO
from tokenizer import CharTokenizer


def test_vocabulary_is_frequency_ordered_with_unk_first():
    tok = CharTokenizer.from_text("bbbaac")
    assert tok.itos == ["<unk>", "b", "a", "c"]
    assert tok.encode("abcz") == [2, 1, 3, 0]
    assert tok.decode([1, 2, 3]) == "bac"


def test_hugging_face_tokenizer_json_loads_in_node_with_the_same_ids(tmp_path):
    tok = CharTokenizer.from_text("First Citizen:\nBefore we proceed\tany further!")
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    text = "First é Citizen:\n\tproceed!"
    script = (
        "import('@huggingface/tokenizers').then(({Tokenizer}) => {"
        f"const t = new Tokenizer(JSON.parse(require('fs').readFileSync({json.dumps(str(path))}, 'utf8')), {{}});"
        f"const ids = t.encode({json.dumps(text)}).ids;"
        "console.log(JSON.stringify({ids, text: t.decode(ids.filter((i) => i !== 0))}));})"
    )
    out = json.loads(subprocess.run(["node", "-e", script], cwd=REPO, capture_output=True, text=True, check=True).stdout)
    assert out["ids"] == tok.encode(text)
    assert out["text"] == text.replace("é", "")
    assert CharTokenizer.load(path).itos == tok.itos


# The literal <unk> (as wikitext writes rare words), unknown characters ('é', '@', '<', '>', digits),
# a broken "<un" and "unk>" that stay characters, and <unk> at both ends and back to back.
UNK_TEXT = "<unk> = Robert <unk> = é @-@ 3 <un <unk><unk>unk> k>\n<unk>"


def hf_ids(tokenizer_json, texts):
    script = (
        "import('@huggingface/tokenizers').then(({Tokenizer}) => {"
        f"const t = new Tokenizer(JSON.parse(require('fs').readFileSync({json.dumps(str(tokenizer_json))}, 'utf8')), {{}});"
        "const texts = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
        "console.log(JSON.stringify(texts.map((s) => t.encode(s, {add_special_tokens: false}).ids)));})"
    )
    run = subprocess.run(["node", "-e", script], cwd=REPO, input=json.dumps(texts), capture_output=True, text=True, check=True)
    return json.loads(run.stdout)


def test_literal_unk_is_one_token_as_in_the_hugging_face_tokenizer(tmp_path):
    tok = CharTokenizer.from_text("Robert = unk k\n")
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    ids = tok.encode(UNK_TEXT)
    assert ids == hf_ids(path, [UNK_TEXT])[0]
    assert ids.count(0) == UNK_TEXT.count("<unk>") + sum(1 for c in UNK_TEXT.replace("<unk>", "") if c not in tok.stoi)
    spans = tok.encode_spans(UNK_TEXT)
    assert [i for i, _ in spans] == ids
    assert sum(w for _, w in spans) == len(UNK_TEXT)
    assert [w for _, w in spans][:2] == [5, 1]


def test_committed_house_tokenizer_encodes_the_wikitext_slice_like_hugging_face():
    path = REPO / "models" / "itera-lite-tiny" / "tokenizer.json"
    data = REPO / "data" / "wikitext-2" / "test.txt"
    assert data.is_file(), f"{data} is missing: the repository ships it (data/README.md)"
    text = data.read_text(encoding="utf-8")
    text = text[: int(len(text) * 0.1)]
    tok = CharTokenizer.load(path)
    hf = hf_ids(path, [UNK_TEXT, text])
    assert tok.encode(UNK_TEXT) == hf[0]
    assert tok.encode(text) == hf[1]
    assert len(hf[1]) == len(text) - 4 * text.count("<unk>") > 0
