"""CLIP on captioned MNIST digits (issue 18): trains through the attnlab command line, then scores
what the model never saw in training.

    single    configs/clip_digits.yaml from scratch on single digits; zero-shot accuracy on the
              validation and test digits from class prompts: the training templates ("a photo of
              the digit {}", ...) and the held-out ones, never in a training caption
    lit       the same with --preset clip-mnist-lit: the pretrained all-MiniLM-L6-v2 as a frozen text
              tower (LiT); compare its held-out-template accuracy with `single`'s
    pairs     configs/clip_pairs.yaml on two digits side by side; recall@1 and @5 of image -> text and
              text -> image among the images of the held-out digit pairs (never in training) and their
              captions "a {left} to the left of a {right}", one per ordered pair (16: chance 1/16 at
              image -> text), beside the same for pairs seen in training (with new images)

The data (src/attnlab/data/digit_captions.py) is built under --data when absent. Validation is what
the recipes were chosen on; test is reported once.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/clip_digits.py single --data data/captions --out runs/clip
    ... --smoke: a few steps and a tenth of the images, to check the pipeline in a minute
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from attnlab.checkpoint import load_checkpoint
from attnlab.cli import main as attnlab
from attnlab.data.digit_captions import TEMPLATES, build, caption
from attnlab.evaluation.retrieval import embed_images, embed_texts

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist" / "mnist_t10k_first8000.npz"
STAGES = {"single": ("clip_digits.yaml", "single", []), "lit": ("clip_digits.yaml", "single", ["--preset", "clip-mnist-lit"]),
          "pairs": ("clip_pairs.yaml", "pairs", [])}
SMOKE = ["train.max_steps=4", "train.eval_interval=2", "train.eval_batches=1", "train.max_minutes=0"]
CANONICAL_PAIR = "a {left} to the left of a {right}"  # a training template


def read_split(folder: Path, processor, every: int) -> tuple:
    """-> (raw images, their digit tuples) of every `every`-th line of a pairs.jsonl."""
    lines = [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()][::every]
    return [processor.read(folder / line["image"]) for line in lines], [tuple(line["digits"]) for line in lines]


def zero_shot(model, processor, images: torch.Tensor, digits: list) -> dict:
    """Accuracy of the nearest class prompt (prompts averaged over a template group), per group."""
    truth = torch.tensor([d for (d,) in digits])
    groups = {"a photo of the digit {digit}": ["a photo of the digit {digit}"], "train templates":
              list(TEMPLATES["single"]["train"]), "held-out templates": list(TEMPLATES["single"]["held_out"]),
              **{f"held out: {t}": [t] for t in TEMPLATES["single"]["held_out"]}}
    scores = {}
    for name, templates in groups.items():
        prompts = embed_texts(model, processor, [caption(t, (d,)) for d in range(10) for t in templates])
        classes = torch.nn.functional.normalize(prompts.view(10, len(templates), -1).mean(1), dim=-1)  # (10, D)
        scores[name] = round(float(((images @ classes.T).argmax(1) == truth).float().mean()), 4)
    return scores


def retrieval(model, processor, images: torch.Tensor, digits: list, held_out: set) -> dict:
    """Recall@1 and @5 both ways among held-out-pair images and among seen-pair ones. The captions are
    the distinct pairs' (one each, from the canonical template; for held-out pairs from a held-out
    template too): image -> text ranks them for each image, text -> image ranks the images for each."""
    scores = {}
    unseen = [tuple(sorted(d)) in held_out for d in digits]
    cases = {"held-out pairs": (True, CANONICAL_PAIR), "seen pairs": (False, CANONICAL_PAIR),
             "held-out pairs, held-out template": (True, TEMPLATES["pairs"]["held_out"][0])}
    for name, (want, template) in cases.items():
        rows = [i for i, u in enumerate(unseen) if u == want]
        pairs = sorted({digits[i] for i in rows})
        texts = embed_texts(model, processor, [caption(template, p) for p in pairs])  # (C, D)
        relevant = torch.tensor([[digits[i] == p for p in pairs] for i in rows])  # (N, C)
        similarity = images[rows] @ texts.T  # (N, C)
        scores[name] = {"images": len(rows), "captions": len(pairs)}
        for k in (1, 5):
            image_hits = relevant.gather(1, similarity.topk(k, dim=1).indices).any(1)
            text_hits = relevant.T.gather(1, similarity.T.topk(k, dim=1).indices).any(1)
            scores[name] |= {f"image_to_text_recall@{k}": round(float(image_hits.float().mean()), 4),
                             f"text_to_image_recall@{k}": round(float(text_hits.float().mean()), 4)}
    return scores


def evaluate(run: Path, data: Path, kind: str, every: int) -> dict:
    model, processor = load_checkpoint(run / "best")
    held_out = {tuple(p) for p in json.loads((data / "manifest.json").read_text())["held_out_pairs"]}
    report = {}
    for split in ("val", "test"):
        items, digits = read_split(data / kind / split, processor, every)
        images = embed_images(model, processor, items)  # (N, D)
        report[split] = (zero_shot(model, processor, images, digits) if kind == "single" else
                         retrieval(model, processor, images, digits, held_out))
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("overrides", nargs="*", help="extra section.key=value settings for the run")
    parser.add_argument("--data", type=Path, default=Path("data/captions"), help="digit captions (built if absent)")
    parser.add_argument("--out", type=Path, default=Path("runs/clip"))
    parser.add_argument("--eval-only", action="store_true", help="score the run already in --out")
    parser.add_argument("--smoke", action="store_true", help="a few steps and a tenth of the images: checks the pipeline")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not (args.data / "manifest.json").exists():
        build(MNIST, args.data, {"train": 20000, "val": 2000, "test": 2000})
    config, kind, extra = STAGES[args.stage]
    run = args.out / args.stage
    report = {"stage": args.stage}
    if not args.eval_only:
        start, cpu = time.perf_counter(), time.process_time()
        code = attnlab(["train", "--config", str(ROOT / "configs" / config), "--data", str(args.data / kind / "train"),
                        "--out", str(run), f"data.val_path={args.data / kind / 'val'}", "train.device=cpu",
                        "train.progress=false", *extra, *(SMOKE if args.smoke else []), *args.overrides])
        if code:
            sys.exit(code)
        report |= {"train_seconds": round(time.perf_counter() - start), "train_cpu_seconds": round(time.process_time() - cpu)}
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    report["steps"] = metrics[-1].get("step")
    report.update(evaluate(run, args.data, kind, 10 if args.smoke else 1))
    (run / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
