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


def plot_confusion(metrics, png_path):
    """The confusion matrix as a PNG heat map with counts, rows gold, columns predicted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, counts = metrics["labels"], metrics["confusion_matrix"]
    size = 2 + 0.45 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=90 if max(map(len, names)) > 3 else 0)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(f"accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f}")
    peak = max(max(row) for row in counts) or 1
    for i, row in enumerate(counts):
        for j, value in enumerate(row):
            if value:
                ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                        color="white" if value > peak / 2 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
