"""Residual Transformer blocks: self-attention, optional cross-attention, feed-forward.

Pre-LN:  x = x + Dropout(Sublayer(Norm(x)))
Post-LN: x = Norm(x + Dropout(Sublayer(x)))      (Vaswani et al. 2017)
"""

from torch import nn

from .attention import MultiHeadAttention
from .feedforward import FeedForward
from .norms import make_norm


class TransformerBlock(nn.Module):
    def __init__(self, d_model, n_head, ffn_hidden, *, ffn_kind="gelu", norm="layernorm", norm_eps=1e-5,
                 prenorm=True, bias=True, dropout=0.0, attn_dropout=None, n_kv_head=None,
                 cross_attention=False, attn_scale=None, head_dim=None, backend="sdpa", self_attention=None):
        """self_attention: a module to use instead of MultiHeadAttention (sliding-window, block
        sparse, ...): an AttentionBase, so it takes the same keywords, plus whatever `attn_kwargs`
        the model passes (key_mask, global_mask, ...)."""
        super().__init__()
        self.prenorm = prenorm
        attn_dropout = dropout if attn_dropout is None else attn_dropout

        def attention():
            return MultiHeadAttention(d_model, n_head, n_kv_head=n_kv_head, head_dim=head_dim, bias=bias,
                                      dropout=attn_dropout, scale=attn_scale, backend=backend)

        self.self_attn = attention() if self_attention is None else self_attention
        self.norm_self = make_norm(norm, d_model, norm_eps, bias)
        self.cross_attn = attention() if cross_attention else None
        self.norm_cross = make_norm(norm, d_model, norm_eps, bias) if cross_attention else None
        self.ffn = FeedForward(d_model, ffn_hidden, ffn_kind, bias=bias, dropout=dropout)
        self.norm_ffn = make_norm(norm, d_model, norm_eps, bias)
        self.dropout = nn.Dropout(dropout)

    def _residual(self, x, norm, sublayer):
        if self.prenorm:
            return x + self.dropout(sublayer(norm(x)))
        return norm(x + self.dropout(sublayer(x)))

    def forward(self, x, mask=None, causal=False, bias=None, rotary=None, position_ids=None, cache=None,
                layer_idx=0, memory=None, memory_mask=None, **attn_kwargs):
        """x (B, T, C); memory (B, S, C) is the encoder output for cross-attention (or (B / G, S, C)
        when G consecutive rows share one source, as beams do); attn_kwargs go to a custom
        self-attention module (e.g. key_mask, global_mask)."""
        x = self._residual(x, self.norm_self, lambda h: self.self_attn(
            h, mask=mask, bias=bias, causal=causal, rotary=rotary, position_ids=position_ids,
            cache=cache, layer_idx=layer_idx, **attn_kwargs))
        if self.cross_attn is not None:
            x = self._residual(x, self.norm_cross, lambda h: self.cross_attn(
                h, kv_input=memory, mask=memory_mask, cache=cache, layer_idx=layer_idx))
        return self._residual(x, self.norm_ffn, self.ffn)
