"""The answer's records, shared by every classifier (model.py, onnx_model.py).

Its own module so that the ONNX classifier need not import model.py (which
imports onnx_model for the ONNX backends): no import circle, and nothing on
the ONNX path can pull in torch.
"""
from __future__ import annotations


def format_results(probs, labels: dict[int, str]) -> list[dict]:
    """Rows of probabilities -> the answer's records (label, probabilities by label)."""
    results = []
    for row in probs:
        row = [float(p) for p in row]
        best = max(range(len(row)), key=row.__getitem__)
        results.append({"label": labels.get(best, str(best)),
                        "probabilities": {labels.get(i, str(i)): round(p, 6) for i, p in enumerate(row)}})
    return results
