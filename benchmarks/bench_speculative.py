"""Speculative decoding speed: a target GPT alone against the same target checked by a small draft
model or by prompt lookup, at batch 1 and 4, greedy and sampled, tokens/s as medians of
interleaved rounds, with the acceptance rate; Hugging Face `generate(assistant_model=...)` on the
same weights beside it (batch 1, greedy: HF refuses larger batches).

Train the target, then distil the draft from it (`train.teacher`: the draft learns the target's
next-token distributions and takes its tokenizer), which is what makes its drafts hold:

    D=../shared/data/tinyshakespeare.txt
    attnlab train --config configs/shakespeare_char.yaml --data $D --out runs/spec_target \
        model.n_layer=6 model.d_model=256 model.n_head=8 model.max_seq_len=256 train.max_steps=1500 \
        train.precision=bf16
    attnlab train --config configs/shakespeare_char.yaml --data $D --out runs/spec_draft_distilled \
        model.n_layer=1 model.d_model=96 model.n_head=4 model.max_seq_len=256 train.max_steps=6000 \
        train.precision=bf16 train.teacher=runs/spec_target
    OMP_NUM_THREADS=1 python benchmarks/bench_speculative.py runs/spec_target runs/spec_draft_distilled --data $D

(A draft trained on the text alone, without `train.teacher`, is the baseline it is compared with.)
RESULTS.md (issue 21) also reports a deeper target, `model.n_layer=12` (9.5 M parameters), with a
draft distilled from it the same way (its best: `model.d_model=128 train.max_steps=8000`, run with
`--k 8`): the speed-up is bounded by what a draft step and a (k + 1)-token verify cost against one
target step, and against 6 layers a 1-layer draft is heavier than speculative decoding's drafts
usually are.
`--smoke` runs the same code on two small random models (checks the script, measures nothing).
The last table splits one speculative run's time into drafting, the target's verify pass and the
rest (acceptance, cache truncation, bookkeeping).
"""

import argparse
import collections
import tempfile
import time

import torch

from attnlab.checkpoint import load_checkpoint
from attnlab.commands.common import resolve_checkpoint
from attnlab.inference import Sampling, generate
from attnlab.inference import speculative
from attnlab.inference.speculative import LookupDrafter, ModelDrafter, SpeculationStats, speculative_generate
from attnlab.interop import export_hf
from attnlab.models.base import build_model, preset
from attnlab.tokenizers import CharTokenizer
from common import interleaved_ratios, machine


def trained(target_dir, draft_dir):
    target, tokenizer = load_checkpoint(resolve_checkpoint(target_dir))
    draft, _ = load_checkpoint(resolve_checkpoint(draft_dir))
    return target.eval(), draft.eval(), tokenizer


def smoke(text: str):
    tokenizer = CharTokenizer(sorted(set(text)))
    torch.manual_seed(0)
    sizes = {"vocab_size": tokenizer.vocab_size, "max_seq_len": 256}
    target = build_model(preset("gpt-tiny", n_layer=4, d_model=128, n_head=4, **sizes)).eval()
    draft = build_model(preset("gpt-tiny", n_layer=1, d_model=32, n_head=2, **sizes)).eval()
    return target, draft, tokenizer


def prompts_from(text: str, batch: int, length: int, copy_heavy: bool, first: int = 0, offset: int = 1000) -> list:
    """Prompts of `length` characters from the text, the i-th from character offset + 5000 * (first + i);
    copy-heavy ones hold a passage twice and end a third time part-way into it, so that the
    continuation repeats it."""
    out = []
    for row in range(first, first + batch):
        start = offset + 5000 * row
        if copy_heavy:
            passage = text[start:start + length // 3]
            out.append(passage + passage + passage[:len(passage) // 4])
        else:
            out.append(text[start:start + length])
    return out


def tokens_per_s(run, count_tokens):
    started = time.perf_counter()
    outputs = run()
    return count_tokens(outputs) / (time.perf_counter() - started)


def measure(target, draft, tokenizer, text, args):
    """Yield a row per cell and method as each cell is measured. Every cell decodes `args.prompt_sets`
    different sets of `batch` prompts, one set after another, so that one passage's luck does not decide it."""
    settings = [("greedy", Sampling(max_new_tokens=args.new_tokens, temperature=0)),
                ("sampled T=0.8", Sampling(max_new_tokens=args.new_tokens, temperature=0.8, seed=0))]
    for batch in args.batches:
        for copy_heavy in (False, True):
            sets = [[tokenizer.encode(p) for p in prompts_from(text, batch, args.prompt_chars, copy_heavy, s * batch,
                                                               args.offset)]
                    for s in range(args.prompt_sets)]
            for name, sampling in settings:
                stats = {}

                def alone():
                    return [row for prompts in sets for row in generate(target, prompts, sampling)]

                def speculate(make_drafter, key, k=args.k):
                    def run():
                        outputs, total = [], SpeculationStats()
                        for prompts in sets:
                            new, part = speculative_generate(target, make_drafter(), prompts, sampling, draft_tokens=k)
                            outputs += new
                            total.rounds, total.drafted = total.rounds + part.rounds, total.drafted + part.drafted
                            total.accepted += part.accepted
                        stats[key] = total
                        return outputs
                    return run

                count = lambda outputs: sum(len(o) for o in outputs)  # noqa: E731
                model, lookup = (lambda: ModelDrafter(draft)), LookupDrafter
                runners = {
                    "target alone": lambda: tokens_per_s(alone, count),
                    f"draft k={args.k}": lambda: tokens_per_s(speculate(model, f"draft k={args.k}"), count),
                    "draft k=auto": lambda: tokens_per_s(speculate(model, "draft k=auto", "auto"), count),
                    f"lookup k={args.k}": lambda: tokens_per_s(speculate(lookup, f"lookup k={args.k}"), count),
                    "lookup k=auto": lambda: tokens_per_s(speculate(lookup, "lookup k=auto", "auto"), count),
                }
                ratios = interleaved_ratios(runners, "target alone", args.rounds)
                for runner, (rate, ratio, low, high) in ratios.items():
                    accepted = stats.get(runner)  # a speculative runner's SpeculationStats, keyed by its name
                    yield (batch, "copy-heavy" if copy_heavy else "free text", name, runner, rate, ratio, low, high,
                           accepted.acceptance_rate if accepted else None)


def with_zero_biases(model):
    """The same function in GPT-2's shape: a model trained without biases, given biases of zero."""
    if model.config.bias:
        return model
    twin = build_model(model.config.replace(bias=True)).eval()
    state = twin.state_dict()
    for name in state:
        state[name] = model.state_dict().get(name, torch.zeros_like(state[name]))
    twin.load_state_dict(state)
    return twin


def hf_assisted(target, draft, tokenizer, text, args):
    """Batch 1, greedy: HF generate alone and with the draft as assistant_model, same weights."""
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as directory:
        export_hf(with_zero_biases(target), f"{directory}/target")
        export_hf(with_zero_biases(draft), f"{directory}/draft")
        hf_target = AutoModelForCausalLM.from_pretrained(f"{directory}/target").eval()
        hf_draft = AutoModelForCausalLM.from_pretrained(f"{directory}/draft").eval()
    prompt = torch.tensor([tokenizer.encode(prompts_from(text, 1, args.prompt_chars, False)[0])])
    n = args.new_tokens

    def hf_run(assistant=None):
        with torch.inference_mode():
            out = hf_target.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                                     min_new_tokens=n, do_sample=False, pad_token_id=0, assistant_model=assistant)
        return [out[0, prompt.size(1):].tolist()]

    count = lambda outputs: len(outputs[0])  # noqa: E731
    return interleaved_ratios({
        "HF generate": lambda: tokens_per_s(hf_run, count),
        "HF assistant_model": lambda: tokens_per_s(lambda: hf_run(hf_draft), count),
        "attnlab target alone": lambda: tokens_per_s(
            lambda: generate(target, prompt.tolist(), Sampling(max_new_tokens=n, temperature=0)), count),
        f"attnlab draft k={args.k}": lambda: tokens_per_s(lambda: speculative_generate(
            target, ModelDrafter(draft), prompt.tolist(), Sampling(max_new_tokens=n, temperature=0),
            draft_tokens=args.k)[0],
            count),
    }, "HF generate", args.rounds)


def time_split(target, draft, tokenizer, text, args, batch: int, sampling) -> dict:
    """Seconds of one speculative run (free text) spent drafting, in the target's verify pass, and
    in the rest."""
    prompts = [tokenizer.encode(p) for p in prompts_from(text, batch, args.prompt_chars, False)]
    spent = collections.Counter()
    feed = speculative.Decoder.feed

    def timed_feed(decoder, ids):
        started = time.perf_counter()
        logits = feed(decoder, ids)
        spent["draft model" if decoder.model is draft else "target verify"] += time.perf_counter() - started
        return logits

    speculative.Decoder.feed = timed_feed
    try:
        started = time.perf_counter()
        speculative_generate(target, ModelDrafter(draft), prompts, sampling, draft_tokens=args.k)
        total = time.perf_counter() - started
    finally:
        speculative.Decoder.feed = feed
    return {**spent, "the rest": total - sum(spent.values()), "total": total}


def speed_table(target, draft, tokenizer, text, args):
    print("| batch | prompts | decoding | method | tokens/s | x target | min | max | accepted |")
    print("|---|---|---|---|---|---|---|---|---|")
    for batch, kind, name, runner, rate, ratio, low, high, accepted in measure(target, draft, tokenizer, text, args):
        shown = "" if accepted is None else f"{accepted:.1%}"
        print(f"| {batch} | {kind} | {name} | {runner} | {rate:.1f} | {ratio:.2f}x | {low:.2f} | {high:.2f} | {shown} |",
              flush=True)  # a run stopped part-way keeps the cells it measured


def hf_table(target, draft, tokenizer, text, args):
    print("\n| batch 1, greedy, free text | tokens/s | x HF generate | min | max |\n|---|---|---|---|---|")
    for runner, (rate, ratio, low, high) in hf_assisted(target, draft, tokenizer, text, args).items():
        print(f"| {runner} | {rate:.1f} | {ratio:.2f}x | {low:.2f} | {high:.2f} |")


@torch.no_grad()
def agreement_table(target, draft, tokenizer, text, args):
    """How often the draft would be right, on 32 blocks of 256 tokens of the last tenth of the text (the
    training runs' validation split): argmax agreement (what greedy acceptance asks), the overlap
    sum min(p, q) at T = 0.8 (a sampled draft's chance of acceptance), and the draft's loss on the text."""
    ids = torch.tensor(tokenizer.encode(text[int(len(text) * 0.9):]))
    starts = torch.randint(len(ids) - 257, (32,), generator=torch.Generator().manual_seed(1)).tolist()
    blocks = torch.stack([ids[s:s + 257] for s in starts]).to(next(target.parameters()).device)  # (32, 257)
    p, q = (model(blocks[:, :-1]).logits.float() for model in (target, draft))  # (32, 256, V)
    overlap = torch.minimum((p / 0.8).softmax(-1), (q / 0.8).softmax(-1)).sum(-1).mean()
    loss = torch.nn.functional.cross_entropy(q.flatten(0, 1), blocks[:, 1:].flatten())
    print("\n| draft | argmax agreement | overlap at T=0.8 | draft loss (nats) |\n|---|---|---|---|")
    print(f"| {args.draft} | {(p.argmax(-1) == q.argmax(-1)).float().mean():.3f} | {overlap:.3f} | {loss:.3f} |")


def split_table(target, draft, tokenizer, text, args):
    print(f"\n| draft k={args.k}, free text | draft model s | target verify s | the rest s | total s |\n|---|---|---|---|---|")
    for batch in args.batches:
        for name, sampling in (("greedy", Sampling(max_new_tokens=args.new_tokens, temperature=0)),
                               ("sampled T=0.8", Sampling(max_new_tokens=args.new_tokens, temperature=0.8, seed=0))):
            split = time_split(target, draft, tokenizer, text, args, batch, sampling)
            print(f"| batch {batch}, {name} | {split['draft model']:.3f} | {split['target verify']:.3f} | "
                  f"{split['the rest']:.3f} | {split['total']:.3f} |")


def batch_sizes(text: str) -> list:
    """"1,4" -> [1, 4]; anything else is refused by argparse as an invalid batch_sizes value."""
    sizes = [int(size) for size in text.split(",")]
    if min(sizes) < 1:
        raise ValueError(text)
    return sizes


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("target", nargs="?")
    parser.add_argument("draft", nargs="?")
    parser.add_argument("--data", default="../shared/data/tinyshakespeare.txt")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-chars", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=batch_sizes, default=[1, 4],
                        help="batch sizes of the speed table, comma-separated")
    parser.add_argument("--prompt-sets", type=int, default=4, help="sets of prompts each speed cell decodes in turn")
    parser.add_argument("--offset", type=int, default=1000, help="the character where the first prompt starts (the "
                        "reported runs use 1000; tune anything on other prompts, e.g. 600000)")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--device", default="cpu", help="where the models run (the Hugging Face part: cpu only)")
    parser.add_argument("--part", choices=["all", "speed", "hf", "split", "agree"], default="all",
                        help="only the speed table, the Hugging Face comparison, the time split, or how often the "
                        "draft agrees with the target")
    args = parser.parse_args()
    torch.set_num_threads(1)
    text = open(args.data).read()
    target, draft, tokenizer = smoke(text) if args.smoke else trained(args.target, args.draft)
    target, draft = target.to(args.device), draft.to(args.device)
    gpu = f", {torch.cuda.get_device_name(args.device)}" if args.device.startswith("cuda") else ""
    print(f"machine: {machine()}{gpu}")
    if args.part in ("all", "speed"):
        speed_table(target, draft, tokenizer, text, args)
    if args.part in ("all", "hf"):
        hf_table(target, draft, tokenizer, text, args)
    if args.part in ("all", "split"):
        split_table(target, draft, tokenizer, text, args)
    if args.part in ("all", "agree"):
        agreement_table(target, draft, tokenizer, text, args)


if __name__ == "__main__":
    main()
