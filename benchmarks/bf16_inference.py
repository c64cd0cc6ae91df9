"""Issue 23: what bf16 weights change at inference. A character-level GPT (4 layers, d_model 128,
context 64) is trained briefly on tiny Shakespeare (first 90 %), then scored on the held-out
10 % in fp32 and with its weights cast to bf16, and both continue the same prompts greedily.
Not a timing (that is bench_decode.py): perplexity, bits per character and token agreement.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bf16_inference.py [--steps 300]
"""

import argparse
import copy
from pathlib import Path

import torch

from attnlab.evaluation.perplexity import perplexity
from attnlab.inference import Sampling, generate
from attnlab.models import GPTConfig, build_model
from attnlab.tokenizers import CharTokenizer
from attnlab.training import make_optimizer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
BLOCK, BATCH = 64, 12


def train(text: str, steps: int):
    tokenizer = CharTokenizer.train(text)
    ids = torch.tensor(tokenizer.encode(text))
    torch.manual_seed(0)
    model = build_model(GPTConfig(vocab_size=tokenizer.vocab_size, max_seq_len=BLOCK, n_layer=4, n_head=4,
                                  d_model=128, bias=False, tie_weights=False))
    optimizer = make_optimizer(model, 1e-3, 0.1, (0.9, 0.99))
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - BLOCK - 1, (BATCH,))
        batch = torch.stack([ids[s:s + BLOCK + 1] for s in starts])
        loss = model(batch[:, :-1], targets=batch[:, 1:]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model.eval(), tokenizer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--val-chars", type=int, default=20000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    text = DATA.read_text()
    split = int(0.9 * len(text))
    model, tokenizer = train(text[:split], args.steps)
    val = text[split:split + args.val_chars]
    prompts = [tokenizer.encode(p) for p in ("ROMEO:", "First Citizen:\n", "The king")]
    greedy = Sampling(max_new_tokens=100, temperature=0)
    rows = {}
    for name, weights in (("fp32", model), ("bf16 weights", copy.deepcopy(model).to(torch.bfloat16))):
        rows[name] = (perplexity(weights, tokenizer, val, quiet=True), generate(weights, prompts, greedy))
    print(f"char GPT after {args.steps} steps; held-out {args.val_chars} characters; greedy 100 tokens x 3 prompts")
    fp32_tokens = rows["fp32"][1]
    for name, (scores, tokens) in rows.items():
        same = sum(a == b for ta, tb in zip(tokens, fp32_tokens) for a, b in zip(ta, tb))
        print(f"  {name:13s} perplexity {scores['perplexity']:.4f}  bits/char {scores['bits_per_char']:.4f}  "
              f"greedy tokens equal to fp32: {same}/{sum(map(len, fp32_tokens))}")


if __name__ == "__main__":
    main()
