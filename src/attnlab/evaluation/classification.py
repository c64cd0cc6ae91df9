"""Classification metrics: accuracy, per-class and macro F1, confusion matrix."""

import torch


def classification_metrics(predicted, gold, names) -> dict:
    """predicted, gold: sequences of class ids; names: the label strings, by id."""
    n = len(names)
    confusion = torch.zeros(n, n, dtype=torch.long)  # rows: gold, columns: predicted
    for g, p in zip(gold, predicted):
        confusion[g, p] += 1
    true_pos = confusion.diag().float()
    precision = true_pos / confusion.sum(dim=0).clamp(min=1)
    recall = true_pos / confusion.sum(dim=1).clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    total = int(confusion.sum())
    return {"examples": total, "accuracy": float(true_pos.sum()) / max(total, 1), "macro_f1": float(f1.mean()),
            "f1": {name: float(v) for name, v in zip(names, f1)}, "labels": list(names),
            "confusion_matrix": confusion.tolist()}


def format_confusion(metrics) -> str:
    """The confusion matrix as aligned text: rows gold, columns predicted."""
    names = metrics["labels"]
    width = max(6, *(len(n) for n in names))
    lines = ["gold \\ pred".ljust(width + 2) + " ".join(n.rjust(width) for n in names)]
    for name, row in zip(names, metrics["confusion_matrix"]):
        lines.append(name.ljust(width + 2) + " ".join(str(v).rjust(width) for v in row))
    return "\n".join(lines)
