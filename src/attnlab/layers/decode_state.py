"""Decode states: what a causal model keeps between decoding steps.

Every state holds B rows and L columns, one column per token it has seen; `mask` (B, L) is 1
for a real token and 0 for padding. Rows are right-aligned: a row's tokens fill its last
columns and the columns before them are padding, so positions count each row's own tokens
(`masks.positions_from_mask`) and a row decodes exactly as it would alone. Three operations
let one loop serve sampling, beam search and continuous batching:

- `select(rows)`: keep and reorder rows (beams, finished requests);
- `extend(other)`: append another state's rows below these, right-aligning both to the
  longer length (a newly prefilled request joins the batch);
- `trim()`: drop leading columns that are padding in every row;
- `truncate(length)`: forget the columns from `length` on, or with a length per row, each row's
  columns from its own length on, the rows right-aligned again (speculative decoding takes back
  the drafted tokens the target rejected, row by row), where `truncatable`; a state that cannot
  (a memory, an SSM state) is copied and re-fed instead.

`recurrent` is True for a state of fixed size (a memory, not a growing history), which
generation never has to restart however long it runs.

Kinds: `KVCache` (keys and values per layer; also the seq2seq decoders' cache), `StaticKVCache`
(a KV cache of fixed shapes, for a compiled single-token step), `HiddenMemory`
(Transformer-XL: each layer's last inputs) and `RecomputeState` (no cache: the model re-reads
the ids it holds every step).
"""

import dataclasses

import torch

from .masks import positions_from_mask


def leading_padding(mask: torch.Tensor) -> int:
    """(B, L) mask -> how many leading columns are padding in every row."""
    used = mask.any(dim=0).nonzero()
    return int(used[0]) if len(used) else mask.size(1)


def right_align(x: torch.Tensor, length: int, dim: int = 1) -> torch.Tensor:
    """Keep the last `length` entries of x along `dim`, padding with zeros on the left."""
    held = x.size(dim)
    if held >= length:
        return x.narrow(dim, held - length, length)
    shape = list(x.shape)
    shape[dim] = length - held
    return torch.cat([x.new_zeros(shape), x], dim=dim)


def kept_columns(lengths: torch.Tensor) -> torch.Tensor:
    """lengths (B,): row r keeps its first lengths[r] columns -> for each column of the right-aligned
    result (B, max length), the column it comes from, or -1 for the padding now before it."""
    longest = int(lengths.max())
    return torch.arange(longest, device=lengths.device) - (longest - lengths)[:, None]


class DecodeState:
    """The protocol; `mask` (B, L) long, set by each kind."""

    recurrent = False
    truncatable = False  # whether `truncate` works: a history can forget its last columns, a memory cannot
    mask: torch.Tensor

    @property
    def length(self) -> int:
        return self.mask.size(1)

    @property
    def padded(self) -> bool:
        """Whether any column in use is padding (rows of different lengths)."""
        return not bool(self.mask.all())

    def select(self, rows: torch.Tensor) -> None:
        raise NotImplementedError

    def extend(self, other: "DecodeState") -> None:
        raise NotImplementedError

    def trim(self) -> None:
        raise NotImplementedError

    def truncate(self, length) -> None:
        """length: an int for every row, or (B,) one per row."""
        raise NotImplementedError(f"a {type(self).__name__} cannot forget what it has seen")


class KVCache(DecodeState):
    """Self-attention keys and values in per-layer buffers (B, H, capacity, D) that grow by
    doubling, so appending one token costs a copy of that token, not of the whole history.
    Cross-attention keys and values (seq2seq) are computed once per source and kept as they are.

    A model announces the mask of the tokens it feeds (`begin`); each layer then appends their
    keys and values at columns [L, L + T), and the mask takes the new columns once the last layer
    has appended. A caller that never announces one (a seq2seq decoder) feeds only real tokens.
    batch=None: the rows are known at the first append.

    `padded` says whether any column in use is padding. While none is (one prompt, or rows of one length
    that keep the same counts), a model needs no padding mask and its positions count on from
    `length`: a decoding step skips the mask arithmetic in every layer, which is a large part of a
    small model's step (a draft model's, in speculative decoding).
    """

    truncatable = True

    def __init__(self, n_layer: int, capacity: int = 256, batch: int = None, device=None):
        self.n_layer = n_layer
        self.capacity = capacity
        self._keys = [None] * n_layer
        self._values = [None] * n_layer
        self._cross = [None] * n_layer
        self.mask = None if batch is None else torch.zeros(batch, 0, dtype=torch.long, device=device)
        self._incoming = None  # (B, T) mask of the tokens being appended; None: all real
        self._padding = False  # whether some column of the mask is 0

    @property
    def length(self) -> int:
        return 0 if self.mask is None else self.mask.size(1)

    @property
    def padded(self) -> bool:
        return self._padding

    def begin(self, new_ids: torch.Tensor, attention_mask: torch.Tensor = None) -> torch.Tensor | None:
        """new_ids (B, T): the tokens the coming forward appends, attention_mask (B, T) theirs (None:
        all real) -> the mask over every column once they are in (B, L + T), or None while no column
        is padding."""
        if attention_mask is not None and not self._padding:
            self._padding = not bool(attention_mask.all())
        if not self._padding:
            self._incoming = None
            return None
        self._incoming = torch.ones_like(new_ids) if attention_mask is None else attention_mask.long()
        return torch.cat([self.mask, self._incoming], dim=1)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Add (B, H, T_new, D) keys and values; return all of them so far (B, H, L + T_new, D)."""
        if self.mask is None:
            self.mask = torch.zeros(k.size(0), 0, dtype=torch.long, device=k.device)
        start = self.length  # advances once the last layer has appended
        end = start + k.size(2)
        if self._keys[layer] is None or end > self._keys[layer].size(2):
            self._grow(layer, k, v, end)
        self._keys[layer][:, :, start:end] = k
        self._values[layer][:, :, start:end] = v
        if layer == self.n_layer - 1:
            incoming = self._incoming if self._incoming is not None else self.mask.new_ones(k.size(0), k.size(2))
            self.mask, self._incoming = torch.cat([self.mask, incoming], dim=1), None
        return self._keys[layer][:, :, :end], self._values[layer][:, :, :end]

    def _grow(self, layer, k, v, needed):
        capacity = max(self.capacity, 1)
        while capacity < needed:
            capacity *= 2
        old_k, old_v = self._keys[layer], self._values[layer]
        b, h, _, d = k.shape
        new_k = k.new_zeros(b, h, capacity, d)  # columns not yet written read as zeros (a StaticKVCache attends them)
        new_v = v.new_zeros(b, h, capacity, v.size(-1))
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

    def select(self, rows: torch.Tensor) -> None:
        """Keep and reorder rows (only the columns in use are copied). The cross-attention keys
        and values stay as they are: rows move only among copies of one source (its beams)."""
        length = self.length

        def pick(t):  # (B, H, capacity, D) -> (len(rows), H, capacity, D)
            if t is None:
                return None
            kept = t.new_empty((len(rows),) + t.shape[1:])
            torch.index_select(t[:, :, :length], 0, rows, out=kept[:, :, :length])
            return kept
        self._keys = [pick(t) for t in self._keys]
        self._values = [pick(t) for t in self._values]
        self.mask = self.mask[rows]

    def extend(self, other: "KVCache") -> None:
        """Append the rows of `other` (a self-attention cache with the same layers)."""
        if any(kv is not None for kv in self._cross + other._cross):
            raise ValueError("only self-attention caches can be extended: cross-attention keys follow their source")
        length = max(self.length, other.length)
        self.capacity = max(self.capacity, other.capacity, length)
        self._padding = self._padding or other._padding or self.length != other.length

        def join(mine, theirs):  # each (B_i, H, capacity_i, D) with L_i columns in use
            rows = mine.size(0) + theirs.size(0)
            out = mine.new_zeros(rows, mine.size(1), self.capacity, mine.size(3))  # padding columns read as zeros
            out[:mine.size(0), :, length - self.length:length] = mine[:, :, :self.length]
            out[mine.size(0):, :, length - other.length:length] = theirs[:, :, :other.length]
            return out
        self._keys = [join(a, b) for a, b in zip(self._keys, other._keys)]
        self._values = [join(a, b) for a, b in zip(self._values, other._values)]
        self.mask = torch.cat([right_align(self.mask, length), right_align(other.mask, length)])

    def trim(self) -> None:
        drop, length = leading_padding(self.mask), self.length
        if not drop:
            return
        for buffers in (self._keys, self._values):
            for t in buffers:
                t[:, :, :length - drop] = t[:, :, drop:length].clone()
        self.mask = self.mask[:, drop:]
        self._padding = not bool(self.mask.all())

    def truncate(self, length) -> None:
        if not isinstance(length, int) and bool((length == length[0]).all()):
            length = int(length[0])  # every row alike: no column moves
        if isinstance(length, int):
            self.mask = self.mask[:, :length]  # the buffers' later columns are overwritten by the next append
            return
        source = kept_columns(length)  # (B, L')
        longest = source.size(1)
        for row, shift in enumerate((longest - length).tolist()):
            if shift:  # the row's columns move right by `shift`, in place (a copy of one row, not a gather)
                for t in self._keys + self._values:  # (B, H, capacity, D)
                    t[row, :, shift:longest] = t[row, :, :longest - shift].clone()
        self.mask = self.mask.gather(1, source.clamp(min=0)) * (source >= 0)
        self._padding = True  # rows of different lengths


class StaticKVCache(KVCache):
    """A KV cache whose buffers (B, H, capacity, D) and column mask (B, capacity) keep their shapes
    while it decodes, so a compiled single-token step runs one graph at every length.

    Columns [0, length) hold the tokens seen and the rest are padding. A single new token is
    written at column `length`, held as a tensor (`_position`) that the step advances in place,
    and attention reads all `capacity` columns under the mask; the order of the keys does not
    matter to one query, and positions count the mask's ones. A longer feed (a prompt) takes the
    KVCache path over the columns in use. It never grows: capacity must cover the generation.
    """

    def __init__(self, n_layer: int, capacity: int, batch: int = None, device=None):
        self._columns = None  # (B, capacity) long mask, allocated with the rows
        self._position = torch.zeros(1, dtype=torch.long, device=device)  # (1,) the next column to write
        self._spares = None  # buffers shaped like the keys and values, for select
        super().__init__(n_layer, capacity, batch=batch, device=device)

    @property
    def length(self) -> int:
        return 0 if self._columns is None else int(self._position)

    @property
    def mask(self) -> torch.Tensor:
        return None if self._columns is None else self._columns[:, :self.length]

    @mask.setter
    def mask(self, value: torch.Tensor) -> None:
        """(B, L) -> the first L columns; the rest become padding and the next token goes to column L."""
        if value is None:
            self._columns = None
            return
        rows, used = value.shape
        if used > self.capacity:
            raise ValueError(f"a static KV cache holds {self.capacity} tokens, not {used}")
        value = value.clone()  # it may be a view of the columns it replaces
        if self._columns is None or self._columns.size(0) != rows:
            self._columns = value.new_zeros(rows, self.capacity)
        self._columns[:, :used] = value
        self._columns[:, used:] = 0
        self._position = self._position.to(value.device).fill_(used)

    def begin(self, new_ids: torch.Tensor, attention_mask: torch.Tensor = None) -> torch.Tensor:
        if new_ids.size(1) > 1:
            return super().begin(new_ids, attention_mask)
        new = torch.ones_like(new_ids) if attention_mask is None else attention_mask.long()
        self._columns.index_copy_(1, self._position, new)
        return self._columns  # (B, capacity)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """One token (B, H, 1, D): written at column `length`; -> every column (B, H, capacity, D)."""
        if k.size(2) > 1:
            return super().append(layer, k, v)
        if self._keys[layer] is None:  # a one-token prompt
            self._grow(layer, k, v, self.capacity)
        self._keys[layer].index_copy_(2, self._position, k)
        self._values[layer].index_copy_(2, self._position, v)
        if layer == self.n_layer - 1:
            self._position += 1
        return self._keys[layer], self._values[layer]

    def _grow(self, layer, k, v, needed):
        if needed > self.capacity:
            raise ValueError(f"a static KV cache holds {self.capacity} tokens, not {needed}")
        super()._grow(layer, k, v, needed)

    def select(self, rows: torch.Tensor) -> None:
        """Keep and reorder rows. As many rows as before: into spare buffers of the same shapes (the
        ones replaced become the next spares), so a compiled step's graph still fits; columns past
        `length` keep stale but finite values, which the mask hides."""
        length = self.length
        same_rows = self._keys[0] is not None and len(rows) == self._keys[0].size(0)
        if same_rows and (self._spares is None or self._spares[0][0].shape != self._keys[0].shape):
            self._spares = ([torch.zeros_like(t) for t in self._keys], [torch.zeros_like(t) for t in self._values])
        for i, buffers in enumerate((self._keys, self._values)):
            for layer, t in enumerate(buffers):
                if t is None:
                    continue
                if not same_rows:  # a new batch size: whole copies, every column finite
                    buffers[layer] = t.index_select(0, rows)
                    continue
                spare = self._spares[i][layer]
                torch.index_select(t[:, :, :length], 0, rows, out=spare[:, :, :length])
                buffers[layer], self._spares[i][layer] = spare, t
        self.mask = self.mask[rows]


class HiddenMemory(DecodeState):
    """Transformer-XL's memory: per layer the inputs (B, M, C) it saw for the last M <= mem_len
    tokens (no gradient), and their key mask (B, M). Fixed in size, so recurrent."""

    recurrent = True

    def __init__(self, n_layer: int, batch: int, width: int, device=None, dtype=None):
        self.memory = [torch.zeros(batch, 0, width, device=device, dtype=dtype) for _ in range(n_layer)]
        self.mask = torch.zeros(batch, 0, dtype=torch.long, device=device)

    def update(self, memory: list, mask: torch.Tensor) -> None:
        """The model's memory after a forward, with its mask (None: every column real)."""
        self.memory = memory
        self.mask = memory[0].new_ones(memory[0].shape[:2], dtype=torch.long) if mask is None else mask.long()

    def select(self, rows: torch.Tensor) -> None:
        self.memory = [m[rows] for m in self.memory]
        self.mask = self.mask[rows]

    def extend(self, other: "HiddenMemory") -> None:
        length = max(self.length, other.length)
        self.memory = [torch.cat([right_align(a, length), right_align(b, length)])
                       for a, b in zip(self.memory, other.memory)]
        self.mask = torch.cat([right_align(self.mask, length), right_align(other.mask, length)])

    def trim(self) -> None:
        drop = leading_padding(self.mask)
        self.memory = [m[:, drop:] for m in self.memory]
        self.mask = self.mask[:, drop:]


class RecomputeState(DecodeState):
    """No cache: the state keeps the ids (B, L) and their mask, and each step the model re-reads
    all of them (the decoding loop keeps L within the model's context window)."""

    def __init__(self, batch: int, device=None):
        self.ids = torch.zeros(batch, 0, dtype=torch.long, device=device)
        self.mask = torch.zeros(batch, 0, dtype=torch.long, device=device)

    def rerun(self, forward, input_ids: torch.Tensor, attention_mask: torch.Tensor = None, only_last: bool = False):
        """Add input_ids (B, T) with their mask (default all real) and run `forward` (a model
        called without a state) over every id held, positions counting each row's real tokens.
        -> its output, with logits for the new tokens only (B, T or 1, V)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        self.ids = torch.cat([self.ids, input_ids], dim=1)
        self.mask = torch.cat([self.mask, attention_mask.long()], dim=1)
        out = forward(self.ids, attention_mask=self.mask, position_ids=positions_from_mask(self.mask, self.length),
                      only_last=only_last)
        return out if only_last else dataclasses.replace(out, logits=out.logits[:, -input_ids.size(1):])

    def select(self, rows: torch.Tensor) -> None:
        self.ids, self.mask = self.ids[rows], self.mask[rows]

    def extend(self, other: "RecomputeState") -> None:
        length = max(self.length, other.length)
        self.ids = torch.cat([right_align(self.ids, length), right_align(other.ids, length)])
        self.mask = torch.cat([right_align(self.mask, length), right_align(other.mask, length)])

    def trim(self) -> None:
        drop = leading_padding(self.mask)
        self.ids, self.mask = self.ids[:, drop:], self.mask[:, drop:]

    def truncate(self, length) -> None:
        if isinstance(length, int):
            self.ids, self.mask = self.ids[:, :length], self.mask[:, :length]
            return
        source = kept_columns(length)  # (B, L')
        index = source.clamp(min=0)
        self.ids, self.mask = self.ids.gather(1, index), self.mask.gather(1, index) * (source >= 0)
