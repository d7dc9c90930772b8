"""Write a local DistilBERT sequence classifier with RANDOM weights.

For machines that cannot reach the model hub: `--size base` has exactly the
architecture of distilbert-base-uncased (dim 768, 6 layers, 12 heads) with a
2-label head and the bert-base-uncased WordPiece vocabulary, so a forward
pass costs what the real model's does. `--size tiny` (dim 32, 2 layers) is for
tests. The outputs of either are MEANINGLESS: use them to measure and test
serving, never to classify anything.

    python -m mlcluster_worker.make_model OUT_DIR [--size base|tiny]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

VOCAB = Path(__file__).parent / "data" / "bert-base-uncased-vocab.txt"
MARKER = "MLCLUSTER_RANDOM_WEIGHTS.json"
WARNING = "RANDOM WEIGHTS: this model's outputs are meaningless (a stand-in with the real model's compute cost)"

SIZES = {
    "base": dict(dim=768, n_layers=6, n_heads=12, hidden_dim=3072),
    "tiny": dict(dim=32, n_layers=2, n_heads=2, hidden_dim=64),
}


def make_model(out_dir: str | Path, size: str = "base", num_labels: int = 2, seed: int = 0) -> Path:
    """Create the model directory (config, safetensors weights, tokenizer) and
    return its path. A directory that already holds one is left as it is."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch
    from transformers import DistilBertConfig, DistilBertForSequenceClassification, DistilBertTokenizerFast

    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}")
    out = Path(out_dir)
    if (out / MARKER).exists() and (out / "config.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = DistilBertConfig(vocab_size=30522, max_position_embeddings=512, num_labels=num_labels, **SIZES[size])
    model = DistilBertForSequenceClassification(config).eval()
    # `vocab=` (not `vocab_file=`): transformers 5 silently builds a 5-token
    # vocabulary from `vocab_file`; and a bare vocab has no length limit.
    tokenizer = DistilBertTokenizerFast(vocab=str(VOCAB), do_lower_case=True, model_max_length=512)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    for path in [out, *out.iterdir()]:  # readable by a container's non-root user when mounted
        path.chmod(0o755 if path.is_dir() else 0o644)
    architecture = "distilbert-base-uncased" if size == "base" else "tiny distilbert"
    (out / MARKER).write_text(json.dumps({"warning": WARNING, "size": size, "architecture": architecture}, indent=2))
    return out


def is_random_stand_in(model_dir: str | Path) -> bool:
    return (Path(model_dir) / MARKER).exists()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--size", choices=sorted(SIZES), default="base")
    parser.add_argument("--labels", type=int, default=2)
    args = parser.parse_args(argv)
    path = make_model(args.out_dir, args.size, args.labels)
    print(f"wrote {args.size} DistilBERT classifier to {path}", file=sys.stderr)
    print(f"WARNING: {WARNING}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
