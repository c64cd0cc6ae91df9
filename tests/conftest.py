"""Test-session settings and shared fixtures. Tiny models gain nothing from intra-op threads,
and on a shared, busy CPU the thread hand-offs cost more than the math: tests run on one thread."""

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ATTNLAB_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"shared data not found at {DATA}; set ATTNLAB_DATA")
    return DATA


def tiny_corpus() -> str:
    """A small text with a learnable pattern, about 20k characters."""
    lines = [f"the {animal} sat on the {thing} number {i % 10}." for i, (animal, thing) in
             enumerate([("cat", "mat"), ("dog", "log"), ("bird", "wire")] * 200)]
    return "\n".join(lines) + "\n"


@pytest.fixture
def tiny_text(tmp_path) -> Path:
    path = tmp_path / "tiny.txt"
    path.write_text(tiny_corpus())
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _assert_trains_alike_under_bf16(fast, reference, ids):
    """One bf16-autocast training step of two models with the same weights: the same loss (to
    bf16 precision) and gradients pointing the same way. For hand-written attention kernels,
    whose backward runs outside autocast."""
    losses, grads = [], []
    for model in (fast, reference):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(ids, targets=ids).loss
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(losses[0], losses[1], atol=1e-2, rtol=0)
    assert torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > 0.999


@pytest.fixture
def assert_trains_alike_under_bf16():
    return _assert_trains_alike_under_bf16
