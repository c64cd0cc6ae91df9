"""The projection from hidden states to vocabulary logits."""

import torch
from torch import nn


class VocabProjection(nn.Linear):
    """nn.Linear(d_model, vocab) that, when decoding on CPU (no autograd), computes the logits
    as (W x^T)^T: MKL multiplies ~20 % faster with the (vocab, d_model) matrix as the left
    operand than with it transposed on the right, as F.linear does, at decoding batch sizes.
    Same numbers to float rounding; training takes nn.Linear's path."""

    def forward(self, x):
        if torch.is_grad_enabled() or x.device.type != "cpu":
            return super().forward(x)
        logits = (self.weight @ x.reshape(-1, x.size(-1)).t()).t().contiguous()  # (N, V)
        if self.bias is not None:
            logits = logits + self.bias
        return logits.view(*x.shape[:-1], -1)
