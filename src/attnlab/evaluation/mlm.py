"""Masked-LM perplexity and accuracy of an encoder on a text: the held-out score of `train task=mlm`."""

import math

import torch
import torch.nn.functional as F

from ..data.mlm import mask_tokens, special_ids
from ..errors import UserError

MLM_HEADS = ("mlm", "pretraining")


@torch.no_grad()
def masked_lm_scores(model, tokenizer, text: str, seq_len: int = 128, batch_size: int = 16, seed: int = 0) -> dict:
    """Cut the text's tokens into [CLS] window [SEP] rows of `seq_len`, corrupt them as training
    does (15 %, 80/10/10, from a generator seeded with `seed`, so a score is repeatable) and score
    the predictions of the chosen tokens."""
    if model.config.head not in MLM_HEADS:
        raise UserError(f"eval scores an encoder's masked-LM head; this {model.config.family} model has head "
                        f"{model.config.head!r} (use `attnlab classify --input FILE` to score a classifier)")
    seq_len = min(seq_len, model.config.max_seq_len)
    lines = [line for line in text.splitlines() if line.strip()]
    ids = torch.tensor([i for row in tokenizer.encode_batch(lines, add_special_tokens=False) for i in row])
    body = seq_len - 2
    if len(ids) < body:
        raise UserError(f"the text has {len(ids)} tokens, too few for one sequence of {seq_len}; give more text")
    special = special_ids(tokenizer)
    windows = ids[:len(ids) // body * body].view(-1, body)  # (N, T - 2)
    rows = torch.cat([windows.new_full((len(windows), 1), special["cls"]), windows,
                      windows.new_full((len(windows), 1), special["sep"])], dim=1)  # (N, T)
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    model.eval()
    total_nll, correct, scored = 0.0, 0, 0
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        inputs, labels = mask_tokens(batch, mask_id=special["mask"], vocab_size=tokenizer.vocab_size,
                                     special=torch.isin(batch, torch.tensor(special["all"])), generator=generator)
        logits = model(inputs.to(device), attention_mask=torch.ones_like(inputs).to(device)).logits.float().cpu()
        chosen = labels != -100
        total_nll += F.cross_entropy(logits[chosen], labels[chosen], reduction="sum").item()
        correct += int((logits[chosen].argmax(-1) == labels[chosen]).sum())
        scored += int(chosen.sum())
    loss = total_nll / scored
    return {"masked_tokens": scored, "loss": loss, "perplexity": math.exp(loss), "accuracy": correct / scored}
