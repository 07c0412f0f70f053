"""Character tokenizer: frequency order, <unk>, and the same ids from @huggingface/tokenizers in Node."""

import json
import subprocess

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
