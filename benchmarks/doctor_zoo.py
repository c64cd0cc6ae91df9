"""The training doctor's bug zoo: deliberately broken training set-ups, each meant to be flagged by
one probe, and healthy ones (every registered family's tiny model on its example batches, a
fine-tuned encoder classifier, and a GPT built from a run config through `attnlab doctor`'s own
path), which should pass every probe.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/doctor_zoo.py [--json out.json]

Prints one row per set-up: its name, the probe expected to flag it (- for healthy), the probes that
flagged it, and the seconds the slowest probe took; then recall, false alarms and the slowest probe.
"""

import argparse
import dataclasses
import gzip
import json
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from attnlab.models.base import (CAUSAL_LM, CLASSIFIER, DUAL_ENCODER, ENCODER, FAMILIES, build_model, default_task, families_of_kind,
                                 preset)
from attnlab.training.doctor import PROBES, TrainingSetup, diagnose, output_logits, setup_from_run
from attnlab.training.tasks import resolve_run

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BATCHES, ROWS = 24, 4


@dataclasses.dataclass
class Case:
    name: str
    expected: str | None  # the probe that should flag it; None: healthy
    build: Callable[[], TrainingSetup]


class Stream:
    """`count` batches from `make(generator)`, the same each pass (seeded)."""

    def __init__(self, make: Callable, seed: int = 0, count: int = BATCHES):
        self.make, self.seed, self.count = make, seed, count

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed)
        for _ in range(self.count):
            yield self.make(generator)


def tiny(spec, **overrides):
    torch.manual_seed(0)
    return build_model(preset(spec.tiny_preset, **overrides))


def family_setup(spec, **fields) -> TrainingSetup:
    """A family's tiny model on its example batches: what the contract test trains."""
    model, config = fields.pop("model", None) or tiny(spec), preset(spec.tiny_preset)
    stream = lambda seed: Stream(lambda g: spec.example_batch(config, g), seed)  # noqa: E731
    return TrainingSetup(model, stream(0), val_batches=stream(1), is_causal=spec.kind == CAUSAL_LM,
                         in_batch_negatives=spec.kind == DUAL_ENCODER, **fields)


def first(kind: str):
    return FAMILIES[families_of_kind(kind)[0]]


# -- healthy -------------------------------------------------------------------------------

def finetuned_classifier() -> TrainingSetup:
    """An encoder fine-tuned as a two-class sentence classifier on random sentences."""
    spec = first(ENCODER)
    model = tiny(spec, dropout=0.1).classifier_for(["negative", "positive"])

    def batch(g):
        return {"input_ids": torch.randint(5, model.config.vocab_size, (ROWS * 2, 16), generator=g),
                "labels": torch.randint(2, (ROWS * 2,), generator=g)}

    return TrainingSetup(model, Stream(batch), val_batches=Stream(batch, seed=1))


def real_data(folder: Path) -> dict:
    """Default task -> a data file of real text, pairs or images for it (../shared/data), made in `folder`."""
    text = folder / "shakespeare.txt"
    text.write_text((DATA / "tinyshakespeare.txt").read_text()[:200_000])
    multi30k = DATA / "multi30k"
    with gzip.open(multi30k / "train.de.gz", "rt") as de, gzip.open(multi30k / "train.en.gz", "rt") as en:
        pairs = [f"{s.strip()}\t{t.strip()}" for s, t in zip(de, en) if max(len(s), len(t)) <= 50]  # tiny contexts
    (folder / "pairs.tsv").write_text("\n".join(pairs[:3000]) + "\n")
    return {"lm": text, "mlm": text, "seq2seq": folder / "pairs.tsv",
            "image_classification": DATA / "mnist" / "mnist_t10k_first8000.npz"}


def from_run_config(spec) -> TrainingSetup:
    """What `attnlab doctor --preset <tiny> --data <real data>` diagnoses for `spec`'s family."""
    folder = Path(tempfile.mkdtemp(prefix="doctor-zoo-"))
    data = real_data(folder)[default_task(spec)]
    run = resolve_run({"model": {"preset": spec.tiny_preset}, "data": {"path": str(data)},
                       "train": {"batch_size": 8}})
    return setup_from_run(run, folder)


def healthy() -> list:
    specs = [FAMILIES[name] for name in sorted(FAMILIES)]
    cases = [Case(f"healthy {spec.name}", None, lambda spec=spec: family_setup(spec)) for spec in specs]
    cases.append(Case("healthy encoder fine-tune (classifier)", None, finetuned_classifier))
    if DATA.exists():
        cases += [Case(f"healthy {spec.name} from a run config on real data", None,
                       lambda spec=spec: from_run_config(spec)) for spec in specs]
    return cases


# -- broken --------------------------------------------------------------------------------

class Wrapped(nn.Module):
    """A user's model around an attnlab one: `change(logits)` applied to its logits."""

    def __init__(self, inner: nn.Module, change: Callable):
        super().__init__()
        self.inner, self.change = inner, change

    def forward(self, **batch):
        inputs = {name: value for name, value in batch.items() if name not in ("labels", "targets")}
        return self.change(output_logits(self.inner(**inputs)))


def lm_loss(logits, batch):
    return F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten())


def gpt(**fields) -> TrainingSetup:
    return family_setup(first(CAUSAL_LM), **fields)


def softmax_wrong_dim() -> TrainingSetup:
    model = Wrapped(tiny(first(CAUSAL_LM)), lambda logits: logits.softmax(dim=1))  # over time, not the vocabulary
    return gpt(model=model, loss_fn=lambda probs, b: F.nll_loss(probs.clamp_min(1e-9).log().flatten(0, 1),
                                                                 b["targets"].flatten()))


def probabilities_into_cross_entropy() -> TrainingSetup:
    spec = first(CLASSIFIER)
    model = Wrapped(tiny(spec), lambda logits: logits.softmax(dim=-1))
    return family_setup(spec, model=model, loss_fn=lambda probs, b: F.cross_entropy(probs, b["labels"]))


class Regressor(nn.Module):
    """A user's sentence regressor: mean token embedding -> one score per sentence, (B, 1)."""

    def __init__(self, vocab: int = 64, width: int = 32):
        super().__init__()
        self.embed, self.mlp = nn.Embedding(vocab, width), nn.Sequential(nn.Linear(width, width), nn.GELU(),
                                                                         nn.Linear(width, 1))

    def forward(self, input_ids, labels=None):
        return self.mlp(self.embed(input_ids).mean(1))  # (B, 1)


def broadcasting_loss() -> TrainingSetup:
    def batch(g):
        ids = torch.randint(64, (ROWS * 2, 12), generator=g)
        return {"input_ids": ids, "labels": ids.float().mean(1) / 32}  # (B,)

    torch.manual_seed(0)
    return TrainingSetup(Regressor(), Stream(batch), loss_fn=lambda pred, b: ((pred - b["labels"]) ** 2).mean())


def missing_zero_grad() -> TrainingSetup:
    def step(setup, model, optimizer, batch):
        model.train()
        loss = setup.forward(model, batch)[1]
        loss.backward()  # no optimizer.zero_grad() anywhere
        optimizer.step()
        return loss.item()

    return gpt(step=step)


def sorted_loader() -> TrainingSetup:
    """A classifier's training set sorted by label and read in order."""
    spec = first(CLASSIFIER)
    model = tiny(spec)
    classes, rows = model.config.n_labels, ROWS * 2

    def epoch(seed):
        g = torch.Generator().manual_seed(seed)
        items = [spec.example_batch(model.config, g, batch=rows) for _ in range(BATCHES)]
        key = next(name for name in items[0] if name != "labels")  # the processor's input (pixels, a spectrogram)
        inputs = torch.cat([b[key] for b in items])
        labels = torch.arange(len(inputs)) * classes // len(inputs)  # sorted: 0 0 ... 1 1 ... 2 2
        return [{key: inputs[i:i + rows], "labels": labels[i:i + rows]} for i in range(0, len(inputs), rows)]

    return TrainingSetup(model, epoch(0), val_batches=epoch(1))


def bad_initial_scale() -> TrainingSetup:
    model = tiny(first(CAUSAL_LM), tie_weights=False)
    nn.init.normal_(model.lm_head.weight, std=1.0)  # not 0.02: logits of size ~sqrt(d_model)
    return gpt(model=model)


def optimizer_on_other_parameters() -> TrainingSetup:
    """The optimiser is built on a second model (a copy made before the one trained)."""
    spec = first(CAUSAL_LM)
    return gpt(optimizer=lambda model: torch.optim.AdamW(tiny(spec).parameters(), lr=1e-3))


class Detached(nn.Module):
    """A user's classifier on an encoder's states, detached before the head."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder, self.head = encoder, nn.Linear(encoder.config.d_model, 2)

    def forward(self, input_ids, labels=None):
        return self.head(self.encoder(input_ids=input_ids).hidden_states[:, 0].detach())


def detached_encoder() -> TrainingSetup:
    spec = first(ENCODER)
    encoder = tiny(spec)
    return dataclasses.replace(finetuned_classifier(), model=Detached(encoder),
                               loss_fn=lambda logits, b: F.cross_entropy(logits, b["labels"]))


def deep_mlp(activation: type, std: float) -> TrainingSetup:
    """A user's 12-layer MLP classifier on flattened images, initialised with weight std `std` / sqrt(width)."""
    spec = first(CLASSIFIER)
    config = preset(spec.tiny_preset)
    example = spec.example_batch(config, torch.Generator().manual_seed(0))
    width = next(value for name, value in example.items() if name != "labels")[0].numel()  # one flattened input
    torch.manual_seed(0)
    layers = [layer for _ in range(12) for layer in (nn.Linear(width, width), activation())]
    model = nn.Sequential(*layers, nn.Linear(width, config.n_labels))
    for layer in model:
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std=std / width ** 0.5)
            nn.init.zeros_(layer.bias)
    batches = Stream(lambda g: spec.example_batch(config, g, batch=ROWS * 2))
    return TrainingSetup(FlatInput(model), batches, loss_fn=lambda logits, b: F.cross_entropy(logits, b["labels"]))


class FlatInput(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, labels=None, **inputs):  # the classifier's one input, whatever its processor calls it
        (values,) = inputs.values()
        return self.net(values.flatten(1))


def learning_rate_too_high() -> TrainingSetup:
    return gpt(optimizer=lambda model: torch.optim.AdamW(model.parameters(), lr=1.0))


def dead_relus() -> TrainingSetup:
    model = tiny(first(CAUSAL_LM), activation="relu")
    for name, module in model.named_modules():
        if name.endswith("ffn.up"):
            nn.init.constant_(module.bias, -10.0)  # every pre-activation negative: every ReLU dead
    return gpt(model=model)


def collapsed_attention() -> TrainingSetup:
    model = tiny(first(CAUSAL_LM))
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith(("q_proj", "k_proj")):
                module.weight.mul_(60.0)  # scores 3600x too large: each query sees one key
    return gpt(model=model)


class BatchCentred(nn.Module):
    """A user's model that subtracts the batch mean of the embeddings (a BatchNorm-like bug)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, targets=None):
        x = self.inner.tok_emb(input_ids)
        x = x - x.mean(0, keepdim=True)
        return self.inner.lm_head(self.inner.norm_f(x))


def mixing_across_examples() -> TrainingSetup:
    return gpt(model=BatchCentred(tiny(first(CAUSAL_LM))), loss_fn=lm_loss)


class Bidirectional(nn.Module):
    """A user's loop over a GPT's blocks that forgets the causal mask."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, targets=None):
        positions = torch.arange(input_ids.shape[1]).expand_as(input_ids)
        x = self.inner.tok_emb(input_ids) + self.inner.pos_emb(positions)
        for block in self.inner.blocks:
            x = block(x)  # causal=False by default
        return self.inner.lm_head(self.inner.norm_f(x))


def bidirectional_lm() -> TrainingSetup:
    return gpt(model=Bidirectional(tiny(first(CAUSAL_LM))), loss_fn=lm_loss)


def dropout_on_at_evaluation() -> TrainingSetup:
    def evaluate(model, batch):  # model.eval() forgotten
        with torch.no_grad():
            return model(**batch)

    return gpt(model=tiny(first(CAUSAL_LM), dropout=0.2), evaluate=evaluate)


def validation_from_training() -> TrainingSetup:
    setup = family_setup(first(CLASSIFIER))
    return dataclasses.replace(setup, val_batches=Stream(setup.train_batches.make, seed=0, count=8))


def broken() -> list:
    return [
        Case("broadcasting: (B, 1) predictions against (B,) targets", "batch_independence", broadcasting_loss),
        Case("softmax over the time axis", "probabilities", softmax_wrong_dim),
        Case("probabilities into cross_entropy", "softmax_before_ce", probabilities_into_cross_entropy),
        Case("missing zero_grad", "zero_grad", missing_zero_grad),
        Case("unshuffled loader (sorted by label)", "shuffle", sorted_loader),
        Case("output layer initialised with std 1", "initial_loss", bad_initial_scale),
        Case("optimiser holds another model's parameters", "overfit", optimizer_on_other_parameters),
        Case("encoder states detached before the head", "no_gradient", detached_encoder),
        Case("12-layer sigmoid MLP (vanishing gradients)", "grad_norms", lambda: deep_mlp(nn.Sigmoid, 1.0)),
        Case("12-layer ReLU MLP at 2x He init (exploding)", "grad_norms", lambda: deep_mlp(nn.ReLU, 2.0 * 2 ** 0.5)),
        Case("learning rate 1.0 with AdamW", "learning_rate", learning_rate_too_high),
        Case("ReLU FFN with biases at -10 (dead units)", "dead_units", dead_relus),
        Case("query/key weights 60x (attention collapse)", "attention_entropy", collapsed_attention),
        Case("embeddings centred over the batch axis", "batch_independence", mixing_across_examples),
        Case("causal LM without its causal mask", "causal", bidirectional_lm),
        Case("dropout on at evaluation", "dropout_eval", dropout_on_at_evaluation),
        Case("validation batches drawn from the training set", "overlap", validation_from_training),
    ]


def run_case(case: Case) -> dict:
    setup = case.build()
    findings = diagnose(setup)
    flagged = [f.probe for f in findings if not f.healthy]
    return {"name": case.name, "expected": case.expected, "flagged": flagged,
            "right": case.expected in flagged if case.expected else not flagged,
            "slowest_probe": max(findings, key=lambda f: f.seconds).probe,
            "slowest_s": max(f.seconds for f in findings), "total_s": sum(f.seconds for f in findings),
            "lines": [f.line() for f in findings if not f.healthy]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    print(f"{'set-up':58} {'expected':20} {'flagged':44} {'max probe s':>11}")
    for case in broken() + healthy():
        start = time.perf_counter()
        row = run_case(case)
        rows.append(row)
        print(f"{row['name'][:58]:58} {row['expected'] or '-':20} {','.join(row['flagged']) or '-':44} "
              f"{row['slowest_s']:11.2f}  ({time.perf_counter() - start:.1f} s)", flush=True)
    bad = [r for r in rows if r["expected"]]
    good = [r for r in rows if not r["expected"]]
    recall = sum(r["right"] for r in bad) / len(bad)
    alarms = [r for r in good if r["flagged"]]
    slowest = max(rows, key=lambda r: r["slowest_s"])
    print(f"recall {recall:.0%} ({sum(r['right'] for r in bad)}/{len(bad)} broken set-ups flagged by the expected "
          f"probe); false alarms {len(alarms)}/{len(good)} healthy set-ups; slowest probe "
          f"{slowest['slowest_s']:.1f} s ({slowest['slowest_probe']} on {slowest['name']}); {len(PROBES)} probes")
    for row in bad + alarms:
        if not row["right"]:
            print(f"MISSED or FALSE ALARM: {row['name']}: {row['lines']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
