"""Perplexity and bits per token / character of a causal LM on a text."""

import math

import torch
import torch.nn.functional as F

from ..data.corpus import encode_text
from ..errors import UserError
from ..progress import Progress


@torch.no_grad()
def perplexity(model, tokenizer, text: str, stride: int = None, batch_size: int = 8, quiet: bool = False) -> dict:
    """Score every token after the first with up to max_seq_len tokens of context.

    Windows of max_seq_len tokens advance by `stride` (default: half a window, at most
    max_seq_len - 1 so that windows overlap); each token is scored once, in the first window
    that holds it, which is the one that gives it the most context. A model whose decode
    state is recurrent (Transformer-XL's memory) instead reads the whole text once, max_seq_len
    tokens at a time, through that state; `stride` does not apply there. The tokens scored show
    on stderr (attnlab.progress) unless `quiet`.
    """
    ids = torch.from_numpy(encode_text(tokenizer, text))
    if len(ids) < 2:
        raise UserError("the text is too short to evaluate: it needs at least two tokens")
    model.eval()
    state = model.init_state(1, model.config.max_seq_len)
    with Progress(len(ids) - 1, "tok", "scoring", quiet) as bar:
        if state.recurrent:
            total_nll, total_tokens = _recurrent_nll(model, ids, state, bar)
        else:
            total_nll, total_tokens = _windowed_nll(model, ids, stride, batch_size, bar)
    mean = total_nll / total_tokens
    scored_chars = len(text) - len(tokenizer.decode(ids[:1].tolist()))
    return {
        "tokens": total_tokens,
        "loss": mean,
        "perplexity": math.exp(mean),
        "bits_per_token": mean / math.log(2),
        "bits_per_char": total_nll / math.log(2) / max(1, scored_chars),
    }


def _recurrent_nll(model, ids, state, bar):
    """-> (summed NLL, tokens scored): block by block, the state carried from one to the next."""
    device = next(model.parameters()).device
    block, total_nll = model.config.max_seq_len, 0.0
    for start in range(0, len(ids) - 1, block):
        piece = ids[start:start + block + 1].to(device)
        logits = model(piece[None, :-1], state=state).logits[0]  # (T, V)
        total_nll += F.cross_entropy(logits.float(), piece[1:], reduction="sum").item()
        bar.update(len(piece) - 1)
    return total_nll, len(ids) - 1


def _windowed_nll(model, ids, stride, batch_size, bar):
    """-> (summed NLL, tokens scored) over windows of max_seq_len that overlap."""
    length = min(model.config.max_seq_len, len(ids))
    stride = min(stride or max(1, length // 2), length - 1)
    windows = []  # (start, index of the first scored token within the window)
    scored_to, end = 1, length
    while True:
        start = end - length
        windows.append((start, scored_to - start))
        if end == len(ids):
            break
        scored_to, end = end, min(end + stride, len(ids))
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    for i in range(0, len(windows), batch_size):
        chunk = windows[i:i + batch_size]
        inputs = torch.stack([ids[s:s + length] for s, _ in chunk]).to(device)  # (B, T)
        logits = model(inputs).logits[:, :-1].float()  # (B, T-1, V): predictions of positions 1..T-1
        nll = F.cross_entropy(logits.transpose(1, 2), inputs[:, 1:], reduction="none")  # (B, T-1)
        for row, (_, first) in enumerate(chunk):
            total_nll += nll[row, first - 1:].sum().item()
            total_tokens += length - first
            bar.update(length - first)
    return total_nll, total_tokens
