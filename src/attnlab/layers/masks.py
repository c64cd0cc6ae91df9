"""Attention masks. Convention: a boolean mask is True where a query may attend to a key.

Masks broadcast against attention scores of shape (B, H, Tq, Tk).
"""

import torch


def causal_mask(t_query: int, t_key: int, device=None) -> torch.Tensor:
    """(Tq, Tk) bool: query i (the last Tq of Tk positions) sees keys up to its own position."""
    offset = t_key - t_query
    q = torch.arange(t_query, device=device).unsqueeze(1)
    k = torch.arange(t_key, device=device).unsqueeze(0)
    return k <= q + offset


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, Tk) of 1 = real token, 0 = padding  ->  (B, 1, 1, Tk) bool."""
    return attention_mask.bool()[:, None, None, :]


def positions_from_mask(attention_mask: torch.Tensor, t: int) -> torch.Tensor:
    """(B, T_all) of 1 = real token, 0 = left padding -> (B, t) positions of the last t tokens,
    each row counting only its real tokens (so padding does not shift a prompt's positions)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -t:]


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """hidden (B, T, C), attention_mask (B, T) of 1 real / 0 padding -> (B, C): the mean of each
    row's real token states."""
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def combine_masks(*masks):
    """AND of boolean masks that broadcast together; None entries are skipped."""
    result = None
    for mask in masks:
        if mask is None:
            continue
        result = mask if result is None else result & mask
    return result


def to_additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean mask -> additive float mask: 0 where allowed, -inf where masked."""
    if mask.dtype != torch.bool:
        return mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))
