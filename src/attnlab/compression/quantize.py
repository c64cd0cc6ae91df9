"""Quantisation of the block projections (q, k, v, o, ffn) to 8 and 4 bits.

Schemes, each a drop-in replacement for nn.Linear with int8/uint8 buffers in its state dict:

    dynamic_int8  int8 weights (symmetric, one scale per output channel); activations quantised
                  at run time per tensor; int8 x int8 -> int32 matmul (PyTorch's fbgemm/x86
                  quantised kernel does the arithmetic, the quantisation is ours)
    int8          weight-only int8, per-output-channel scales; dequantised for a float matmul
    int4          weight-only 4-bit, asymmetric, one scale and zero point per group of
                  `group_size` input columns; two weights packed per byte
    static_int8   int8 weights and activations with input/output ranges fixed beforehand from a
                  calibration set (post-training static quantisation)
    qat           fake quantisation for quantisation-aware fine-tuning: weights and activations
                  are rounded in the forward pass, gradients pass straight through (STE);
                  `convert_qat` turns the trained model into static_int8

Activations use 7 bits (0..127) in the x86 int8 kernels: their 8-bit x 8-bit products are
summed pairwise in 16 bits, which can saturate with full-range activations (the same
`reduce_range` PyTorch's own quantisation uses).
"""

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .targets import ALL_TARGETS, find_linears

ACT_LEVELS = 127  # 7-bit activations for the x86 kernels (see above)
OUT_LEVELS = 255


# -- the arithmetic ------------------------------------------------------------------------

def quantize_per_channel(weight: torch.Tensor, bits=8):
    """Symmetric per-output-channel: weight (out, in) -> (q int8 (out, in), scale (out,)).

    |weight - q * scale| <= scale / 2 elementwise."""
    qmax = 2 ** (bits - 1) - 1
    scale = (weight.abs().amax(dim=1) / qmax).clamp(min=1e-12)
    q = torch.round(weight / scale[:, None]).clamp(-qmax, qmax).to(torch.int8)
    return q, scale.float()


def quantize_groupwise_int4(weight: torch.Tensor, group_size: int):
    """Asymmetric 4-bit per group of input columns: -> (packed uint8 (out, in/2),
    scale (out, in/g), zero (out, in/g) in 0..15)."""
    out_features, in_features = weight.shape
    groups = weight.float().reshape(out_features, in_features // group_size, group_size)
    low, high = groups.amin(dim=-1).clamp(max=0), groups.amax(dim=-1).clamp(min=0)
    scale = ((high - low) / 15).clamp(min=1e-12)
    zero = torch.round(-low / scale).clamp(0, 15)
    q = (torch.round(groups / scale[..., None]) + zero[..., None]).clamp(0, 15).to(torch.uint8)
    q = q.reshape(out_features, in_features)
    packed = q[:, 0::2] | (q[:, 1::2] << 4)
    return packed, scale, zero.to(torch.uint8)


def dequantize_int4(packed, scale, zero, group_size):
    out_features = packed.size(0)
    q = torch.stack((packed & 0x0F, packed >> 4), dim=-1).reshape(out_features, -1).float()
    groups = q.reshape(out_features, -1, group_size) - zero.float()[..., None]
    return (groups * scale[..., None]).reshape(out_features, -1)


def affine_params(low: float, high: float, levels: int):
    """Range [low, high] (widened to hold 0) -> (scale, zero point) for 0..levels."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = max((high - low) / levels, 1e-8)
    return scale, int(round(-low / scale))


def fake_quantize(x, scale, zero, qmin, qmax):
    """Round to the grid in the forward pass; the straight-through estimator passes the
    gradient unchanged in the backward pass."""
    q = (torch.clamp(torch.round(x / scale) + zero, qmin, qmax) - zero) * scale
    return x + (q - x).detach()


def _quantized_weight(q, scale):
    zeros = torch.zeros(q.size(0), dtype=torch.long)
    with warnings.catch_warnings():  # the kernels still take quantised tensors; creating them warns
        warnings.simplefilter("ignore")
        return torch._make_per_channel_quantized_tensor(q, scale.double(), zeros, 0)


# -- the modules ---------------------------------------------------------------------------

class QuantizedLinear(nn.Module):
    """Shared plumbing: shapes, an optional float bias, and rebuilding from a checkpoint."""

    scheme = ""

    def __init__(self, in_features, out_features, bias):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    @classmethod
    def empty(cls, in_features, out_features, bias, **options):
        return cls(in_features, out_features, bias, **options)

    def spec(self) -> dict:
        return {"scheme": self.scheme, "in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None}

    def _copy_bias(self, linear):
        if linear.bias is not None:
            self.bias.data.copy_(linear.bias.detach())

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.scheme}"


class Int8Linear(QuantizedLinear):
    """Weight-only int8, per-output-channel scales."""

    scheme = "int8"

    def __init__(self, in_features, out_features, bias):
        super().__init__(in_features, out_features, bias)
        self.register_buffer("weight_q", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))

    @classmethod
    def from_linear(cls, linear: nn.Linear):
        module = cls(linear.in_features, linear.out_features, linear.bias is not None)
        module.weight_q, module.weight_scale = quantize_per_channel(linear.weight.detach())
        module._copy_bias(linear)
        return module

    def dequantized_weight(self):
        return self.weight_q.float() * self.weight_scale[:, None]  # (out, in)

    def forward(self, x):
        return F.linear(x, self.dequantized_weight().to(x.dtype), self.bias)


class Int4Linear(QuantizedLinear):
    """Weight-only 4-bit, group-wise scales and zero points."""

    scheme = "int4"

    def __init__(self, in_features, out_features, bias, group_size=64):
        super().__init__(in_features, out_features, bias)
        if in_features % group_size or group_size % 2:
            raise UserError(f"int4 group size {group_size} must be even and divide the layer width {in_features}")
        self.group_size = group_size
        groups = in_features // group_size
        self.register_buffer("weight_packed", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("weight_scale", torch.ones(out_features, groups))
        self.register_buffer("weight_zero", torch.zeros(out_features, groups, dtype=torch.uint8))

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size=64):
        group_size = min(group_size, linear.in_features)
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, group_size)
        module.weight_packed, module.weight_scale, module.weight_zero = quantize_groupwise_int4(
            linear.weight.detach(), group_size)
        module._copy_bias(linear)
        return module

    def spec(self):
        return {**super().spec(), "group_size": self.group_size}

    def dequantized_weight(self):
        return dequantize_int4(self.weight_packed, self.weight_scale, self.weight_zero, self.group_size)

    def forward(self, x):
        return F.linear(x, self.dequantized_weight().to(x.dtype), self.bias)


class _PackedInt8(QuantizedLinear):
    """int8 weights packed once (lazily, again after loading a state dict) for the kernels."""

    def __init__(self, in_features, out_features, bias):
        super().__init__(in_features, out_features, bias)
        self.register_buffer("weight_q", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self._packed = None
        self.register_load_state_dict_post_hook(lambda module, _: module._forget_packing())

    def _forget_packing(self):
        self._packed = None

    def packed(self):
        if self._packed is None:
            bias = None if self.bias is None else self.bias.detach().float()
            self._packed = torch.ops.quantized.linear_prepack(_quantized_weight(self.weight_q, self.weight_scale), bias)
        return self._packed

    def dequantized_weight(self):
        return self.weight_q.float() * self.weight_scale[:, None]

    def _set_weight(self, linear):
        self.weight_q, self.weight_scale = quantize_per_channel(linear.weight.detach())
        self._copy_bias(linear)
        self._forget_packing()

    def _apply(self, fn, *args, **kwargs):
        self._forget_packing()
        return super()._apply(fn, *args, **kwargs)


class DynamicInt8Linear(_PackedInt8):
    scheme = "dynamic_int8"

    @classmethod
    def from_linear(cls, linear: nn.Linear):
        module = cls(linear.in_features, linear.out_features, linear.bias is not None)
        module._set_weight(linear)
        return module

    def forward(self, x):
        shape = x.shape
        out = torch.ops.quantized.linear_dynamic(x.reshape(-1, shape[-1]).float(), self.packed(), True)
        return out.reshape(*shape[:-1], self.out_features).to(x.dtype)


class StaticInt8Linear(_PackedInt8):
    """int8 activations with calibrated per-tensor ranges for the input and the output."""

    scheme = "static_int8"

    def __init__(self, in_features, out_features, bias):
        super().__init__(in_features, out_features, bias)
        self.register_buffer("act_range", torch.zeros(4))  # input low, high; output low, high

    @classmethod
    def from_linear(cls, linear: nn.Linear, input_range, output_range):
        module = cls(linear.in_features, linear.out_features, linear.bias is not None)
        module._set_weight(linear)
        module.act_range = torch.tensor([*input_range, *output_range], dtype=torch.float32)
        return module

    def packed(self):
        if self._packed is None:
            low_in, high_in, low_out, high_out = self.act_range.tolist()
            self._in_params = affine_params(low_in, high_in, ACT_LEVELS)
            self._out_params = affine_params(low_out, high_out, OUT_LEVELS)
        return super().packed()

    def forward(self, x):
        shape = x.shape
        packed = self.packed()
        qx = torch.quantize_per_tensor(x.reshape(-1, shape[-1]).float(), *self._in_params, torch.quint8)
        out = torch.ops.quantized.linear(qx, packed, *self._out_params).dequantize()
        return out.reshape(*shape[:-1], self.out_features).to(x.dtype)


class FakeQuantLinear(nn.Linear):
    """nn.Linear that trains through int8 rounding (weights per channel, activations per
    tensor with ranges tracked as an exponential moving average)."""

    scheme = "qat"

    def __init__(self, in_features, out_features, bias=True, momentum=0.95):
        super().__init__(in_features, out_features, bias=bias)
        self.momentum = momentum
        self.register_buffer("act_range", torch.zeros(4))  # input low, high; output low, high
        self.register_buffer("observed", torch.tensor(False))

    @classmethod
    def from_linear(cls, linear: nn.Linear):
        module = cls(linear.in_features, linear.out_features, linear.bias is not None).to(linear.weight.device)
        module.weight, module.bias = linear.weight, linear.bias
        return module

    @classmethod
    def empty(cls, in_features, out_features, bias, **_):
        return cls(in_features, out_features, bias)

    def spec(self):
        return {"scheme": self.scheme, "in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None}

    @torch.no_grad()
    def _track(self, x, index):
        low, high = x.min().float(), x.max().float()
        if not self.observed:
            self.act_range[index], self.act_range[index + 1] = low, high
        else:
            self.act_range[index].lerp_(low, 1 - self.momentum)
            self.act_range[index + 1].lerp_(high, 1 - self.momentum)

    def forward(self, x):
        if self.training:
            self._track(x, 0)
        scale, zero = affine_params(*self.act_range[:2].tolist(), ACT_LEVELS)
        x = fake_quantize(x, scale, zero, 0, ACT_LEVELS)
        w_scale = (self.weight.detach().abs().amax(dim=1, keepdim=True) / 127).clamp(min=1e-12)
        out = F.linear(x, fake_quantize(self.weight, w_scale, 0, -127, 127), self.bias)
        if self.training:
            self._track(out, 2)
            self.observed.fill_(True)
        scale, zero = affine_params(*self.act_range[2:].tolist(), OUT_LEVELS)
        return fake_quantize(out, scale, zero, 0, OUT_LEVELS)


SCHEMES = {cls.scheme: cls for cls in (DynamicInt8Linear, Int8Linear, Int4Linear, StaticInt8Linear, FakeQuantLinear)}
QUANTIZED = (QuantizedLinear, FakeQuantLinear)


# -- whole models --------------------------------------------------------------------------

def quantize_model(model: nn.Module, scheme="dynamic_int8", targets=ALL_TARGETS, calibration=None, group_size=64):
    """Replace the targeted projections in place; returns the model (in eval mode).

    static_int8 needs `calibration`: an iterable of batches (dicts for model(**batch))."""
    if scheme not in SCHEMES or scheme == "qat":
        raise UserError(f"unknown quantisation scheme {scheme!r}; choose one of "
                        f"{', '.join(s for s in SCHEMES if s != 'qat')} (or prepare_qat for qat)")
    found = find_linears(model, targets)
    if not found:
        raise UserError("the model has no float block projections left to quantise")
    if scheme == "static_int8":
        if calibration is None:
            raise UserError("static_int8 needs a calibration set (a few batches of representative inputs)")
        ranges = observe_ranges(model, [linear for *_, linear in found], calibration)
    model.eval()
    for _, parent, attribute, linear in found:
        if scheme == "static_int8":
            quantized = StaticInt8Linear.from_linear(linear, *ranges[linear])
        elif scheme == "int4":
            quantized = Int4Linear.from_linear(linear, group_size)
        else:
            quantized = SCHEMES[scheme].from_linear(linear)
        setattr(parent, attribute, quantized)
    return model


@torch.no_grad()
def observe_ranges(model, linears, batches) -> dict:
    """Run the calibration batches; -> {linear: ((input low, high), (output low, high))}."""
    seen = {}

    def hook(module, inputs, output):
        (x,) = inputs
        new = (x.min().item(), x.max().item(), output.min().item(), output.max().item())
        old = seen.get(module, new)
        seen[module] = (min(old[0], new[0]), max(old[1], new[1]), min(old[2], new[2]), max(old[3], new[3]))

    handles = [linear.register_forward_hook(hook) for linear in linears]
    was_training = model.training
    model.eval()
    try:
        count = 0
        for batch in batches:
            model(**batch)
            count += 1
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if not count:
        raise UserError("the calibration set is empty")
    return {m: ((r[0], r[1]), (r[2], r[3])) for m, r in seen.items()}


def prepare_qat(model: nn.Module, targets=ALL_TARGETS):
    """Swap the targeted projections for fake-quantised ones (same weights, trainable)."""
    found = find_linears(model, targets)
    if not found:
        raise UserError("the model has no float block projections to prepare for QAT")
    for _, parent, attribute, linear in found:
        setattr(parent, attribute, FakeQuantLinear.from_linear(linear))
    return model


def convert_qat(model: nn.Module):
    """Fake-quantised layers -> static int8 layers with the ranges learned in training."""
    for name, module in list(model.named_modules()):
        if isinstance(module, FakeQuantLinear):
            ranges = module.act_range.tolist()
            parent_name, _, attribute = name.rpartition(".")
            setattr(model.get_submodule(parent_name), attribute,
                    StaticInt8Linear.from_linear(module, tuple(ranges[:2]), tuple(ranges[2:])))
    return model.eval()


def torch_dynamic_quantize(model: nn.Module, targets=ALL_TARGETS):
    """PyTorch's own dynamic int8 quantisation of the same projections, for comparison."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qconfig = torch.ao.quantization.default_dynamic_qconfig
        spec = {name: qconfig for name, *_ in find_linears(model, targets)}
        return torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8)


def linear_weight_bytes(model: nn.Module) -> int:
    """Bytes held by the block projections' weights (float, or quantised with their scales)."""
    total = 0
    for *_, child in find_linears(model, kind=(nn.Linear, QuantizedLinear)):
        if isinstance(child, nn.Linear):
            total += child.weight.numel() * child.weight.element_size()
        else:
            total += sum(b.numel() * b.element_size() for n, b in child.named_buffers() if n.startswith("weight"))
    return total
