"""Key/value cache for incremental decoding.

Self-attention keys and values live in per-layer buffers (B, H, capacity, D) that grow by
doubling, so appending one token costs a copy of that token, not of the whole history.
Cross-attention keys and values are computed once per source and kept as they are.
"""

import torch


class KVCache:
    def __init__(self, n_layer: int, capacity: int = 256):
        self.n_layer = n_layer
        self.capacity = capacity
        self._keys = [None] * n_layer
        self._values = [None] * n_layer
        self._cross = [None] * n_layer
        self.length = 0  # tokens held by every layer after each full forward

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Add (B, H, T_new, D) keys and values; return all of them so far (B, H, T, D)."""
        start = self.length  # advances once the last layer has appended
        end = start + k.size(2)
        if self._keys[layer] is None or end > self._keys[layer].size(2):
            self._grow(layer, k, v, end)
        self._keys[layer][:, :, start:end] = k
        self._values[layer][:, :, start:end] = v
        if layer == self.n_layer - 1:
            self.length = end
        return self._keys[layer][:, :, :end], self._values[layer][:, :, :end]

    def _grow(self, layer, k, v, needed):
        capacity = max(self.capacity, needed)
        while capacity < needed:
            capacity *= 2
        old_k, old_v = self._keys[layer], self._values[layer]
        b, h, _, d = k.shape
        new_k = k.new_empty(b, h, capacity, d)
        new_v = v.new_empty(b, h, capacity, v.size(-1))
        if old_k is not None:
            held = min(old_k.size(2), needed)
            new_k[:, :, :held] = old_k[:, :, :held]
            new_v[:, :, :held] = old_v[:, :, :held]
        self._keys[layer], self._values[layer] = new_k, new_v
        self.capacity = capacity

    def has_cross(self, layer: int) -> bool:
        return self._cross[layer] is not None

    def cross(self, layer: int):
        return self._cross[layer]

    def set_cross(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        self._cross[layer] = (k, v)

    def reorder(self, batch_index: torch.Tensor, cross: bool = True):
        """Keep and reorder batch rows (beam search, without autograd): every buffer is indexed on dim 0.

        cross=False leaves the cross-attention keys and values as they are: right when rows
        only move among copies of the same source (the beams of one sentence)."""
        def pick(t):
            return None if t is None else t.index_select(0, batch_index)

        def pick_filled(t):  # (B, H, capacity, D): only the positions written so far are copied
            if t is None:
                return None
            kept = t.new_empty((len(batch_index),) + t.shape[1:])
            torch.index_select(t[:, :, :self.length], 0, batch_index, out=kept[:, :, :self.length])
            return kept
        self._keys = [pick_filled(t) for t in self._keys]
        self._values = [pick_filled(t) for t in self._values]
        if cross:
            self._cross = [None if kv is None else (pick(kv[0]), pick(kv[1])) for kv in self._cross]
