"""Raw matrix-product speed on this CPU: fp32 (MKL) against PyTorch's int8 kernels (fbgemm),
for the linear layers of MiniLM (d_model 384, FFN 1536) at the row counts of batch 1 and
batch 32. It says how much any INT8 scheme can gain here, before attention, norms and
activations are counted.

    python benchmarks/int8_gemm.py [--rounds 7] [--threads 1]

dynamic: activations quantised per call (what dynamic INT8 does); static: int8 in and out,
scales fixed in advance (what static post-training quantisation does).
"""

import argparse
import warnings

import torch

from common import interleaved_medians, machine, rate

SHAPES = {"q/k/v/o 384->384": (384, 384), "FFN up 384->1536": (384, 1536), "FFN down 1536->384": (1536, 384)}


def runners(rows, d_in, d_out, repeats):
    x = torch.randn(rows, d_in)
    weight, bias = torch.randn(d_out, d_in) * 0.05, torch.randn(d_out)
    q_weight = torch.quantize_per_channel(weight, weight.abs().amax(1) / 127, torch.zeros(d_out, dtype=torch.long),
                                          0, torch.qint8)
    packed = torch.ops.quantized.linear_prepack(q_weight, bias)
    q_x = torch.quantize_per_tensor(x, float(x.abs().max()) / 127, 128, torch.quint8)
    calls = {
        "fp32": lambda: torch.nn.functional.linear(x, weight, bias),
        "int8 dynamic": lambda: torch.ops.quantized.linear_dynamic(x, packed, True),
        "int8 static": lambda: torch.ops.quantized.linear(q_x, packed, 0.05, 128),
    }
    flops = 2 * rows * d_in * d_out
    return {name: (lambda call=call: rate(call, flops, repeats) / 1e9) for name, call in calls.items()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*quantized tensor creation")  # deprecated API, still the kernels in use
    torch.backends.quantized.engine = "fbgemm" if "fbgemm" in torch.backends.quantized.supported_engines else "x86"
    print(f"machine: {machine()}; quantized engine {torch.backends.quantized.engine}")
    print(f"{'layer':22s} {'rows':>5s} {'fp32 GFLOP/s':>13s} {'dynamic int8':>13s} {'static int8':>12s}")
    for rows, label in ((32, "batch 1 x 32 tokens"), (1024, "batch 32 x 32 tokens")):
        for name, (d_in, d_out) in SHAPES.items():
            medians = interleaved_medians(runners(rows, d_in, d_out, repeats=max(5, 20000 // rows)), args.rounds)
            fp32 = medians["fp32"]
            print(f"{name:22s} {rows:5d} {fp32:13.1f} {medians['int8 dynamic']:7.1f} ({medians['int8 dynamic'] / fp32:.2f}x)"
                  f" {medians['int8 static']:6.1f} ({medians['int8 static'] / fp32:.2f}x)   [{label}]")


if __name__ == "__main__":
    main()
