"""The training doctor: short probes of a training set-up, each reporting one line that names a
problem and its fix (or "ok").

A set-up is a `TrainingSetup`: a model callable as `model(**batch)` on a dict of tensors (row i
of every tensor is example i) that returns logits or a `ModelOutput`, the loss, the optimiser,
the training step, the evaluation forward and the batch iterables. attnlab's own runs fill it
from a run config (`setup_from_run`, what `attnlab doctor` uses); a user fills it for their own
model and loader and calls `diagnose(setup)`.

Every probe works on a deep copy of the model, under its own fixed seed, and leaves the user's
model, optimiser state and global random state untouched.
"""

import copy
import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

ERROR, WARNING, OK = "error", "warning", "ok"
OVERFIT_STEPS, OVERFIT_SECONDS = 200, 10.0  # the most a one-batch overfit may take
LR_STEPS = 8  # steps on one batch in which a sane learning rate does not raise the loss
SAMPLED_BATCHES = 24  # batches drawn by the loader probes (shuffle, overlap)
DEAD_FRACTION = 0.9
COLLAPSED_ENTROPY = 0.2  # mean attention entropy over ln(keys seen) below which a layer has collapsed
LAYER_RATIO = 1e3  # first-to-last layer gradient norm ratio beyond which gradients explode or vanish
RELATIVE_GRADIENT = 1e3  # gradient norm over weight norm beyond which one step at lr 1e-3 replaces the weight


@dataclasses.dataclass
class Finding:
    """One probe's verdict: `severity` is "error" (a certain bug), "warning" (a likely one) or "ok"."""

    probe: str
    severity: str
    problem: str  # for "ok": what was checked
    fix: str = ""
    seconds: float = 0.0

    @property
    def healthy(self) -> bool:
        return self.severity == OK

    def line(self) -> str:
        return f"{self.severity} {self.probe}: {self.problem}" + (f"; {self.fix}" if self.fix else "")


def output_logits(output) -> torch.Tensor:
    """The logits of a model's output: a tensor itself, or the `logits` of a `ModelOutput`."""
    return output if isinstance(output, torch.Tensor) else output.logits


@dataclasses.dataclass
class TrainingSetup:
    """What the doctor needs of a training set-up; every field but the model and the training
    batches has a default that is what most loops do.

    train_batches / val_batches: iterables of batch dicts that can be iterated more than once (a
    DataLoader, a list); each pass should be what one epoch (or one run of the sampler) gives.
    loss_fn(output, batch) -> scalar loss; None: the output's own `loss` (attnlab models).
    optimizer(model) -> an optimiser over the model's parameters (default: AdamW, lr 1e-3).
    step(setup, model, optimizer, batch) -> loss: the user's training step; None: model.train(),
    zero_grad, forward, backward, optimizer.step().
    evaluate(model, batch) -> output: the user's evaluation forward; None: model.eval() under no_grad.
    is_causal: the output at position t may depend only on inputs up to t (causal LMs).
    in_batch_negatives: the loss compares each example with the batch's others by design (a
    contrastive dual encoder), so the batch-independence probe does not apply.
    n_classes: classes (vocabulary) of the last axis of the logits; None: read from the logits.
    input_key / target_key: the batch's input and target tensors; None: its first key, and
    "labels" or "targets".
    """

    model: nn.Module
    train_batches: Iterable[dict]
    loss_fn: Callable[[Any, dict], torch.Tensor] | None = None
    optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None
    step: Callable[["TrainingSetup", nn.Module, torch.optim.Optimizer, dict], torch.Tensor] | None = None
    evaluate: Callable[[nn.Module, dict], Any] | None = None
    val_batches: Iterable[dict] | None = None
    is_causal: bool = False
    in_batch_negatives: bool = False
    n_classes: int | None = None
    input_key: str | None = None
    target_key: str | None = None

    def loss(self, output, batch: dict) -> torch.Tensor:
        return output.loss if self.loss_fn is None else self.loss_fn(output, batch)

    def forward(self, model: nn.Module, batch: dict) -> tuple:
        """-> (output, loss) of `model` on `batch`."""
        output = model(**batch)
        return output, self.loss(output, batch)

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        if self.optimizer is None:
            return torch.optim.AdamW(model.parameters(), lr=1e-3)
        return self.optimizer(model)

    def train_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, batch: dict) -> float:
        if self.step is not None:
            return float(self.step(self, model, optimizer, batch))
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss = self.forward(model, batch)[1]
        loss.backward()
        optimizer.step()
        return loss.item()

    def eval_output(self, model: nn.Module, batch: dict):
        if self.evaluate is not None:
            return self.evaluate(model, batch)
        model.eval()
        with torch.no_grad():
            return model(**batch)

    def batches(self, split: str = "train", limit: int = SAMPLED_BATCHES) -> list:
        source = self.train_batches if split == "train" else self.val_batches
        device = next(self.model.parameters()).device
        found = []
        for batch in source:
            found.append({name: value.to(device) for name, value in batch.items()})
            if len(found) == limit:
                break
        return found

    def first_batch(self) -> dict:
        found = self.batches(limit=1)
        if not found:
            raise ValueError("the training batches are empty: give train_batches an iterable that yields batch dicts")
        return found[0]

    def inputs_of(self, batch: dict) -> str:
        return self.input_key or next(iter(batch))

    def targets_of(self, batch: dict) -> str | None:
        if self.target_key is not None:
            return self.target_key
        return next((name for name in ("labels", "targets") if name in batch), None)

    def classes(self, logits: torch.Tensor) -> int:
        return self.n_classes or logits.shape[-1]


PROBES = {}  # name -> probe(setup, model copy, first batch) -> (severity, problem, fix)


def probe(function):
    PROBES[function.__name__] = function
    return function


def diagnose(setup: TrainingSetup, probes: Iterable[str] | None = None) -> list:
    """Run `probes` (default: all, in PROBES order) on `setup` -> one `Finding` each."""
    names = list(PROBES) if probes is None else list(probes)
    unknown = [name for name in names if name not in PROBES]
    if unknown:
        raise ValueError(f"unknown probe(s) {', '.join(unknown)}; known probes: {', '.join(PROBES)}")
    batch = setup.first_batch()
    return [run_probe(setup, name, batch) for name in names]


def run_probe(setup: TrainingSetup, name: str, batch: dict) -> Finding:
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        severity, problem, fix = PROBES[name](setup, copy.deepcopy(setup.model), batch)
    return Finding(name, severity, problem, fix, time.perf_counter() - start)


# -- losses and training ----------------------------------------------------------------------

@probe
def initial_loss(setup, model, batch):
    """At initialisation a classifier guesses: its loss is near ln(classes)."""
    model.eval()
    with torch.no_grad():
        output, loss = setup.forward(model, batch)
    classes = setup.classes(output_logits(output))
    expected, found = math.log(classes), loss.item()
    if not math.isfinite(found) or abs(found - expected) > max(1.0, 0.5 * expected):
        return (WARNING, f"the initial loss is {found:.3g}, far from ln({classes}) = {expected:.3g} that uniform "
                "guessing gives", "initialise the output layer small (e.g. normal std 0.02, zero bias) and check "
                "the loss reads logits against the right targets")
    return OK, f"initial loss {found:.3g} is near ln({classes}) = {expected:.3g}", ""


def train_losses(setup, model, batch, steps: int, seconds: float = math.inf, stop_below: float = -math.inf) -> list:
    """The losses of up to `steps` training steps on the one `batch` (fewer when `seconds` run out,
    the loss falls below `stop_below` or stops being finite)."""
    optimizer = setup.make_optimizer(model)
    losses, start = [], time.perf_counter()
    while len(losses) < steps and time.perf_counter() - start < seconds:
        losses.append(setup.train_step(model, optimizer, batch))
        if not math.isfinite(losses[-1]) or losses[-1] < stop_below:
            break
    return losses


def eval_loss(setup, model, batch) -> float:
    model.eval()
    with torch.no_grad():
        return setup.forward(model, batch)[1].item()


@probe
def overfit(setup, model, batch):
    """A model and optimiser that learn at all memorise one batch quickly."""
    first = eval_loss(setup, model, batch)
    losses = train_losses(setup, model, batch, OVERFIT_STEPS, OVERFIT_SECONDS, stop_below=0.5 * first)
    if not losses[-1] < 0.5 * first:
        return (WARNING, f"cannot overfit one batch: the loss went from {first:.3g} to {losses[-1]:.3g} in "
                f"{len(losses)} steps", "check that the optimiser holds the model's parameters, the loss reaches the "
                "outputs and the learning rate is neither tiny nor huge")
    return OK, f"overfits one batch: loss {first:.3g} -> {losses[-1]:.3g} in {len(losses)} steps", ""


@probe
def learning_rate(setup, model, batch):
    """A few steps on one batch at a sane learning rate lower its loss; a rate far too high raises it."""
    first = eval_loss(setup, model, batch)
    losses = train_losses(setup, model, batch, LR_STEPS)
    worst = max(losses) if all(map(math.isfinite, losses)) else math.inf
    if worst > 2 * first or losses[-1] > first:
        return (WARNING, f"the loss rose from {first:.3g} to {worst:.3g} within {len(losses)} steps on one batch",
                "the learning rate is far too high: lower it 10x (or add warmup) until the loss falls")
    return OK, f"the loss falls at this learning rate ({first:.3g} -> {losses[-1]:.3g} in {len(losses)} steps)", ""


# -- gradients --------------------------------------------------------------------------------

def backward(setup, model, batch) -> torch.Tensor:
    model.train()
    model.zero_grad(set_to_none=True)
    loss = setup.forward(model, batch)[1]
    loss.backward()
    return loss


def named(names: list, limit: int = 3) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


@probe
def no_gradient(setup, model, batch):
    """Every trainable parameter gets a gradient: none is detached from the loss, unused by the
    forward pass, or frozen by mistake."""
    ran = set()
    handles = [m.register_forward_hook(lambda module, *_: ran.add(module)) for m in model.modules()]
    try:
        backward(setup, model, batch)
    finally:
        for handle in handles:
            handle.remove()
    owners = {id(p): m for m in model.modules() for p in m.parameters(recurse=False)}
    missing = [(name, p) for name, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or not p.grad.any())]
    detached = [name for name, p in missing if owners[id(p)] in ran]
    unused = [name for name, p in missing if owners[id(p)] not in ran]
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    if detached:
        return (ERROR, f"{len(detached)} parameter tensor(s) take part in the forward pass but get no gradient: "
                f"{named(detached)}", "find the .detach(), .item(), torch.no_grad() or argmax between them and the "
                "loss, or the dead ReLUs before them (see dead_units)")
    if unused:
        return (WARNING, f"{len(unused)} parameter tensor(s) are never used in the forward pass, so never trained: "
                f"{named(unused)}", "feed the inputs that use them, or remove them (DDP then needs no "
                "find_unused_parameters)")
    if frozen:
        return (WARNING, f"{len(frozen)} parameter tensor(s) are frozen (requires_grad=False): {named(frozen)}",
                "set requires_grad=True on them unless freezing them is intended")
    return OK, "every parameter gets a gradient", ""


@probe
def zero_grad(setup, model, batch):
    """On a fixed batch, the gradient the optimiser sees stays the same size step after step; one
    that grows 1x, 2x, 3x is accumulating because the gradients are never zeroed."""
    optimizer = setup.make_optimizer(model)
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * 1e-6  # the weights barely move: the same batch gives the same gradient
    norms = []
    optimizer.register_step_pre_hook(lambda *_: norms.append(gradient_norm(model)))
    for _ in range(3):
        setup.train_step(model, optimizer, batch)
    if len(norms) == 3 and norms[0] > 0 and norms[2] > 2 * norms[0]:
        ratios = ", ".join(f"{n / norms[0]:.2f}" for n in norms)
        return (ERROR, f"the gradient grows step over step on a fixed batch ({ratios} x the first)",
                "call optimizer.zero_grad() (or model.zero_grad()) once per step, before backward()")
    return OK, "gradients are zeroed between steps", ""


def gradient_norm(modules) -> float:
    grads = [p.grad for p in modules.parameters() if p.grad is not None]
    return math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads)) if grads else 0.0


def layer_stacks(model: nn.Module) -> list:
    """(name, [layer, ...]) of each list of two or more layers with parameters: the repeated blocks."""
    stacks = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.ModuleList, nn.Sequential)):
            layers = [child for child in module if any(True for _ in child.parameters())]
            if len(layers) >= 2:
                stacks.append((name, layers))
    return stacks


@probe
def grad_norms(setup, model, batch):
    """Gradients are finite, no weight's gradient is RELATIVE_GRADIENT times the weight, and the
    gradient norm per layer stays within LAYER_RATIO from the first layer of a stack to the last."""
    backward(setup, model, batch)
    if not all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None):
        return (ERROR, "the gradients hold inf or NaN at the first step",
                "look for log(0), division by zero or overflow in the forward pass and loss; clip gradients")
    relative = {name: (p.grad.norm() / p.norm()).item() for name, p in model.named_parameters()
                if p.grad is not None and p.dim() >= 2 and p.norm() > 0}
    largest = max(relative, key=relative.get, default=None)
    if largest is not None and relative[largest] > RELATIVE_GRADIENT:
        return (WARNING, f"gradients explode: the gradient of {largest} is {relative[largest]:.2g}x its weight",
                EXPLODING_FIX)
    stacks = layer_stacks(model)
    return next(filter(None, map(layer_ratio, stacks)),
                (OK, f"gradient norms per layer stay within {LAYER_RATIO:.0f}x across {len(stacks)} stack(s)", ""))


EXPLODING_FIX = ("scale the initialisation down (variance 1 / fan_in, output layer small), normalise activations, "
                 "or clip gradients")


def layer_ratio(stack: tuple) -> tuple | None:
    """A finding when the gradient norms of a stack's first and last layers are LAYER_RATIO apart."""
    name, layers = stack
    first, last = gradient_norm(layers[0]), gradient_norm(layers[-1])
    where = f"in {name}: layer 0 {first:.2g} vs layer {len(layers) - 1} {last:.2g}"
    if first > LAYER_RATIO * last:
        return WARNING, f"gradients explode toward the input {where}", EXPLODING_FIX
    if last > LAYER_RATIO * first:
        return (WARNING, f"gradients vanish toward the input {where}", "use residual connections and normalisation, "
                "a non-saturating activation (GELU, ReLU) and a variance-preserving initialisation")
    return None


# -- activations, attention and probabilities -------------------------------------------------

@probe
def dead_units(setup, model, batch):
    """No linear layer reads inputs of which DEAD_FRACTION or more are zero (dead ReLUs)."""
    fractions, data = {}, {value.data_ptr() for value in batch.values()}

    def record(name):
        def hook(module, args):
            x = args[0]
            if x.is_floating_point() and x.data_ptr() not in data:  # the raw data may well be sparse
                fractions[name] = max(fractions.get(name, 0.0), (x.abs() <= 1e-6).float().mean().item())
        return hook

    handles = [m.register_forward_pre_hook(record(n)) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    try:
        setup.forward(model.train(), batch)
    finally:
        for handle in handles:
            handle.remove()
    dead = [f"{name} ({fraction:.0%})" for name, fraction in fractions.items() if fraction >= DEAD_FRACTION]
    if dead:
        return (WARNING, f"{len(dead)} layer(s) read inputs that are mostly zero (dead units): {named(dead)}",
                "lower the learning rate, initialise biases at zero, or use GELU/LeakyReLU instead of ReLU")
    return OK, f"no dead units in {len(fractions)} linear layer(s)", ""


class Recorder(TorchFunctionMode):
    """Watches the torch calls of a forward pass: the attention weights it computes (softmax over
    the keys of a (B, H, Tq, Tk) tensor, or scaled_dot_product_attention), softmaxes over another
    axis of such a tensor, and the inputs given to cross_entropy."""

    SOFTMAX = {torch.softmax, torch.Tensor.softmax, F.softmax}

    def __init__(self):
        super().__init__()
        self.entropies, self.wrong_axis, self.cross_entropy_inputs = [], [], []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        with torch.no_grad():
            if func in self.SOFTMAX and args[0].dim() == 4:
                dim = kwargs.get("dim", args[1] if len(args) > 1 else -1) % 4
                if dim == 3:
                    self.entropies.append(normalised_entropy(args[0]))
                else:
                    self.wrong_axis.append(dim)
            elif func is F.scaled_dot_product_attention:
                self.entropies.append(normalised_entropy(sdpa_scores(*args, **kwargs)))
            elif func is F.cross_entropy:
                self.cross_entropy_inputs.append(args[0].detach())
        return func(*args, **kwargs)


def sdpa_scores(query, key, value=None, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                **_) -> torch.Tensor:
    """The pre-softmax scores (B, H, Tq, Tk) of a scaled_dot_product_attention call, -inf where masked."""
    if key.size(1) != query.size(1):
        key = key.repeat_interleave(query.size(1) // key.size(1), dim=1)
    scores = query @ key.transpose(-2, -1) * (query.size(-1) ** -0.5 if scale is None else scale)
    if is_causal:
        attn_mask = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        return scores.masked_fill(~attn_mask, -math.inf)
    return scores if attn_mask is None else scores + attn_mask


def normalised_entropy(scores: torch.Tensor) -> float:
    """The mean over rows of entropy / ln(keys the row may see), over rows that may see two or more."""
    seen = torch.isfinite(scores).sum(-1)
    weights = scores.float().softmax(-1)
    entropy = -(weights * weights.clamp_min(1e-30).log()).sum(-1)
    rows = seen >= 2
    return (entropy[rows] / seen[rows].float().log()).mean().item() if rows.any() else 1.0


def recorded(setup, model, batch, eval_mode: bool = True) -> Recorder:
    model.train(not eval_mode)
    with torch.no_grad(), Recorder() as recorder:
        setup.forward(model, batch)
    return recorder


@probe
def attention_entropy(setup, model, batch):
    """At initialisation attention spreads over the keys; a layer whose every query looks at one
    key has collapsed (logits too large: missing 1/sqrt(d) scale, init too wide)."""
    entropies = recorded(setup, model, batch).entropies
    collapsed = [f"call {i} ({e:.2f})" for i, e in enumerate(entropies) if e < COLLAPSED_ENTROPY]
    if collapsed:
        return (WARNING, f"attention entropy has collapsed in {len(collapsed)} of {len(entropies)} attention call(s): "
                f"{named(collapsed)} of ln(keys)", "scale the scores by 1/sqrt(head size), initialise the query and "
                "key projections small, or normalise queries and keys")
    return OK, f"attention spreads over the keys in {len(entropies)} attention call(s)", ""


@probe
def probabilities(setup, model, batch):
    """Probabilities a model produces sum to 1 over the class axis (the last), in its output and in
    its attention."""
    recorder = recorded(setup, model, batch)
    if recorder.wrong_axis:
        return (ERROR, f"a softmax over the attention scores normalises axis {recorder.wrong_axis[0]} of "
                "(B, H, Tq, Tk), not the keys", "use softmax(dim=-1) over the keys")
    logits = output_logits(setup.eval_output(model, batch)).float()
    axis = wrong_probability_axis(logits)
    if axis is not None:
        return (ERROR, f"the outputs are probabilities that sum to 1 over axis {axis}, not over the class axis "
                f"(the last, {logits.shape[-1]} classes)", "apply softmax/log_softmax with dim=-1")
    return OK, "probabilities sum to 1 over the class axis", ""


def wrong_probability_axis(logits: torch.Tensor) -> int | None:
    """The axis over which `logits` (B, ..., C) are (log-)probabilities when it is not the last; else None."""
    if logits.dim() < 2:
        return None
    if logits.min() >= 0 and logits.max() <= 1 + 1e-5:
        totals = [logits.sum(axis) for axis in range(logits.dim())]
    elif logits.max() <= 1e-5:
        totals = [logits.logsumexp(axis).exp() for axis in range(logits.dim())]
    else:
        return None
    if torch.allclose(totals[-1], torch.ones_like(totals[-1]), atol=1e-3):
        return None
    return next((axis for axis, total in enumerate(totals) if torch.allclose(total, torch.ones_like(total), atol=1e-3)),
                None)


@probe
def softmax_before_ce(setup, model, batch):
    """cross_entropy expects logits; given probabilities (softmax already applied) it trains badly."""
    inputs = recorded(setup, model, batch).cross_entropy_inputs
    given = [x for x in inputs if x.is_floating_point() and x.dim() >= 2 and is_distribution(x)]
    if given:
        return (ERROR, "cross_entropy is given probabilities (each row sums to 1): softmax was applied before it",
                "pass the raw logits to cross_entropy (it applies log_softmax itself), or use nll_loss on log_softmax")
    return OK, f"cross_entropy reads logits ({len(inputs)} call(s) seen)", ""


def is_distribution(x: torch.Tensor) -> bool:
    total = x.float().sum(1)
    return bool(x.min() >= 0 and torch.allclose(total, torch.ones_like(total), atol=1e-3))


# -- dependencies between examples and positions ----------------------------------------------

def rows(batch: dict, index: torch.Tensor) -> dict:
    return {name: value[index] for name, value in batch.items()}


def differs(a: torch.Tensor, b: torch.Tensor, tolerance: float = 1e-4) -> bool:
    scale = max(a.abs().max().item(), b.abs().max().item(), 1e-6)
    return (a.float() - b.float()).abs().max().item() > tolerance * scale


def perturbed_targets(targets: torch.Tensor, classes: int) -> torch.Tensor:
    """Other valid targets: class ids shifted by one (ignored ones, < 0, kept), values moved by one."""
    if targets.is_floating_point():
        return targets + 1.0
    return torch.where(targets >= 0, (targets + 1) % classes, targets)


def loss_gradient(setup, model, batch) -> tuple:
    """-> (loss, logits, d loss / d logits) in eval mode."""
    output = model(**batch)
    logits = output_logits(output)
    logits.retain_grad()
    loss = setup.loss(output, batch)
    loss.backward()
    return loss.detach(), logits.detach(), logits.grad


@probe
def batch_independence(setup, model, batch):
    """Example i's output and loss gradient depend on example i alone: not on the order of the
    batch, the inputs of the others, nor the others' targets (broadcasting (B, 1) against (B,),
    statistics over the batch axis)."""
    model.eval()
    if setup.in_batch_negatives:
        return OK, "skipped: a contrastive loss compares each example with the others by design", ""
    sizes = {len(value) for value in batch.values()}
    if len(sizes) > 1:  # e.g. a graph: nodes (N, F) and edges (2, E), whose nodes depend on each other by design
        return OK, "skipped: the batch's tensors share no example axis to permute", ""
    size = sizes.pop()
    if size < 2:
        return OK, "skipped: needs batches of two or more examples", ""
    loss, logits, grad = loss_gradient(setup, model, batch)
    order = torch.arange(size - 1, -1, -1)
    permuted_loss, permuted_logits, _ = loss_gradient(setup, model, rows(batch, order))
    if differs(loss, permuted_loss) or differs(logits[order], permuted_logits):
        return (ERROR, f"reversing the order of the batch changes the loss ({loss.item():.6g} -> "
                f"{permuted_loss.item():.6g}) or the outputs", MIXING_FIX)
    with torch.no_grad():
        copies = output_logits(model(**rows(batch, torch.zeros(size, dtype=torch.long))))
    if differs(logits[0], copies[0]):
        return ERROR, "the output of example 0 changes when the inputs of the other examples change", MIXING_FIX
    target = setup.targets_of(batch)
    if target is not None:
        other = {**batch, target: batch[target].clone()}
        other[target][1:] = perturbed_targets(batch[target][1:], setup.classes(logits))
        model.zero_grad(set_to_none=True)
        if differs(grad[0], loss_gradient(setup, model, other)[2][0]):
            return (ERROR, "the loss gradient of example 0 changes when the targets of the other examples change",
                    "check the shapes the loss compares: (B, 1) against (B,) broadcasts to (B, B); squeeze or "
                    "reshape so that outputs and targets match")
    return OK, "each example's output and loss depend on that example alone", ""


MIXING_FIX = ("compute statistics per example, never over the batch axis (use LayerNorm, not BatchNorm-like means "
              "over dim 0), and keep batch-first shapes through every reshape and transpose")


@probe
def causal(setup, model, batch):
    """In a causal model the output at position t depends on tokens up to t only: the gradient of
    the outputs before position t with respect to the inputs from t on is exactly zero. (A gradient,
    not a perturbation: LSH attention's bucketing legitimately shifts with later tokens, but no
    gradient flows through it.)"""
    if not setup.is_causal:
        return OK, "skipped: not a causal model", ""
    key, batch = setup.inputs_of(batch), dict(batch)
    inputs = []
    if batch[key].is_floating_point():
        batch[key] = batch[key].detach().clone().requires_grad_()
        inputs.append(batch[key])
    else:
        watch_embeddings(model, batch[key], inputs)
    logits = output_logits(model.eval()(**batch))
    if not inputs:
        return OK, f"skipped: no embedding reads {key}", ""
    cut = batch[key].shape[1] // 2
    (logits[:, :cut].float() * torch.randn_like(logits[:, :cut].float())).sum().backward()
    grad = inputs[0].grad.abs().flatten(2).amax(-1)  # (B, T)
    if grad[:, cut:].max() > 1e-6 * grad[:, :cut].max():
        last = int(grad[:, cut:].amax(0).nonzero()[-1]) + cut
        return (ERROR, f"outputs before position {cut} depend on tokens from position {cut} on (up to {last}): "
                "the model sees the future", "apply a causal mask (each query sees keys up to its own position) "
                "and shift the targets by one")
    return OK, "outputs depend on earlier tokens only", ""


def watch_embeddings(model: nn.Module, tokens: torch.Tensor, found: list):
    """Append to `found`, during the next forward pass, the output of the first embedding that reads
    `tokens`, kept for its gradient."""
    def hook(module, args, output):
        if not found and args[0].data_ptr() == tokens.data_ptr():
            output.retain_grad()
            found.append(output)

    for module in model.modules():
        if isinstance(module, nn.Embedding):
            module.register_forward_hook(hook)


@probe
def dropout_eval(setup, model, batch):
    """Evaluation is deterministic: dropout is off (model.eval()) when the evaluation forward runs."""
    model.train()  # where training leaves it
    first = output_logits(setup.eval_output(model, batch))
    second = output_logits(setup.eval_output(model, batch))
    if differs(first, second, 1e-6):
        return (ERROR, "two evaluations of the same batch differ: dropout (or other randomness) is on at evaluation",
                "call model.eval() before evaluating (and model.train() after), and pass training=self.training "
                "to functional dropout")
    return OK, "evaluation is deterministic", ""


# -- the data ---------------------------------------------------------------------------------

def label_histograms(setup, batches: list) -> torch.Tensor | None:
    """(batches, classes) label frequencies per batch, or None without integer targets."""
    key = setup.targets_of(batches[0])
    if key is None or batches[0][key].is_floating_point():
        return None
    labels = [b[key][b[key] >= 0].flatten() for b in batches]
    classes = max(int(x.max()) for x in labels if len(x)) + 1
    counts = torch.stack([torch.bincount(x, minlength=classes).double() for x in labels])
    return counts / counts.sum(1, keepdim=True).clamp_min(1)


@probe
def shuffle(setup, model, batch):
    """In a shuffled loader consecutive batches are no more alike in their labels than any two."""
    histograms = label_histograms(setup, setup.batches("train"))
    if histograms is None or len(histograms) < 4:
        return OK, "skipped: needs integer targets and four or more training batches", ""
    distance = 0.5 * torch.cdist(histograms, histograms, p=1)  # total variation between batches
    consecutive = distance.diagonal(1).mean().item()
    overall = distance.sum().item() / (len(histograms) * (len(histograms) - 1))
    if overall > 0.2 and consecutive < 0.5 * overall:
        return (WARNING, f"consecutive training batches share their labels (label distance {consecutive:.2f} between "
                f"neighbours, {overall:.2f} between any two): the loader is not shuffled",
                "shuffle the training data (DataLoader(shuffle=True) or a random sampler) every epoch")
    return OK, f"labels vary between neighbouring batches as between any two ({consecutive:.2f} vs {overall:.2f})", ""


def contents(setup, batch: dict) -> set:
    """Hashes of what the batch's examples read: n-grams of token rows (with targets that align with
    the inputs restoring masked tokens), whole rows otherwise."""
    key, target = setup.inputs_of(batch), setup.targets_of(batch)
    x = batch[key]
    if x.is_floating_point() or x.dim() != 2:
        return {hash(row.cpu().numpy().tobytes()) for row in x}
    if target is not None and batch[target].shape == x.shape and not batch[target].is_floating_point():
        x = torch.where(batch[target] >= 0, batch[target], x)
    grams = x.unfold(1, min(16, x.shape[1]), 1)  # (B, windows, n)
    return {hash(gram.cpu().numpy().tobytes()) for gram in grams.reshape(-1, grams.shape[-1])}


@probe
def overlap(setup, model, batch):
    """Validation examples are not training examples."""
    if setup.val_batches is None:
        return OK, "skipped: no validation batches", ""
    train = set().union(*(contents(setup, b) for b in setup.batches("train")))
    val = set().union(*(contents(setup, b) for b in setup.batches("val")))
    shared = len(val & train) / max(len(val), 1)
    if shared >= 0.1:
        return (ERROR, f"{shared:.0%} of the sampled validation examples also occur in the training batches",
                "split the data before any augmentation or windowing, deduplicate, and hold out by document")
    return OK, f"{shared:.1%} of sampled validation examples occur in training", ""


# -- attnlab run configs ----------------------------------------------------------------------

class SampledBatches:
    """An iterable of `count` batch dicts of `split` from an attnlab batch source, the same each pass."""

    def __init__(self, source, split: str, count: int = SAMPLED_BATCHES, seed: int = 0):
        self.source, self.split, self.count, self.seed = source, split, count, seed

    def __iter__(self) -> Iterator[dict]:
        generator = torch.Generator().manual_seed(self.seed)
        for _ in range(self.count):
            yield self.source.sample(self.split, generator).inputs


def setup_from_run(run, run_dir: Path) -> TrainingSetup:
    """The set-up `attnlab train` would run for a resolved run config (training/tasks `Run`),
    with its model, batches and optimiser; data caches go in `run_dir`."""
    from ..models.base import CAUSAL_LM, DUAL_ENCODER, family_spec
    from .optim import make_optimizer
    from .tasks import setup_task

    model, _, batches = setup_task(run, run_dir, resume=False)
    t = run.train

    def optimizer(m):
        return make_optimizer(m, t.lr, t.weight_decay, (t.beta1, t.beta2))

    kind = family_spec(model).kind
    return TrainingSetup(model, SampledBatches(batches, "train"), optimizer=optimizer,
                         val_batches=SampledBatches(batches, "val", seed=1), is_causal=kind == CAUSAL_LM and model.generates,
                         in_batch_negatives=kind == DUAL_ENCODER)
