"""GPT with causal sliding-window attention (GPTConfig.attn_window)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnlab.errors import UserError
from attnlab.inference.generate import Sampling, generate
from attnlab.models import GPTConfig, build_model

TINY = dict(vocab_size=50, max_seq_len=64, n_layer=2, n_head=2, d_model=32)


def pair(window, **extra):
    torch.manual_seed(0)
    full = build_model(GPTConfig(**TINY, **extra)).eval()
    sliding = build_model(GPTConfig(**TINY, attn_window=window, **extra)).eval()
    sliding.load_state_dict(full.state_dict())  # same parameters, only the attention pattern differs
    return full, sliding


@pytest.mark.parametrize("position", ["learned", "rotary"])
def test_window_covering_the_context_equals_full_attention(position):
    full, sliding = pair(63, position=position)
    ids = torch.randint(0, 50, (2, 64))
    with torch.no_grad():
        torch.testing.assert_close(sliding(ids).logits, full(ids).logits, atol=1e-5, rtol=1e-5)


def test_receptive_field_is_window_times_layers():
    _, sliding = pair(5)
    ids = torch.randint(0, 50, (1, 40))
    changed = ids.clone()
    changed[0, 0] = (ids[0, 0] + 1) % 50
    with torch.no_grad():
        diff = (sliding(ids).logits - sliding(changed).logits).abs().amax(-1)[0]
    assert diff[:11].min() > 0  # 2 layers x 5 tokens back (plus the token itself) still see token 0
    assert diff[11:].max() == 0  # beyond that it is out of reach


def test_generation_with_cache_equals_without():
    _, sliding = pair(4)
    prompts = [[1, 2, 3, 4, 5, 6, 7], [8, 9]]
    cached = generate(sliding, prompts, Sampling(max_new_tokens=6, temperature=0))
    uncached = generate(sliding, prompts, Sampling(max_new_tokens=6, temperature=0, use_cache=False))
    assert cached == uncached


def test_bad_window_is_a_user_error():
    with pytest.raises(UserError, match="attn_window"):
        GPTConfig(**TINY, attn_window=0)
    with pytest.raises(UserError, match="n_kv_head"):
        GPTConfig(**{**TINY, "n_head": 4}, n_kv_head=2, attn_window=8)


def test_attnlab_train_runs_a_sliding_window_gpt(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("to be or not to be, that is the question. " * 40)
    out = tmp_path / "run"
    repo = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "attnlab.cli", "train", "--data", str(text), "--out", str(out),
           "model.max_seq_len=32", "model.n_layer=1", "model.n_head=2", "model.d_model=16", "model.attn_window=8",
           "train.max_steps=3", "train.batch_size=2", "train.eval_interval=3", "train.eval_batches=1",
           "train.warmup_steps=1", "train.progress=false"]
    env = {"PYTHONPATH": str(repo / "src"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert '"attn_window": 8' in (out / "last" / "config.json").read_text()


def test_sliding_window_trains_under_bf16_autocast_like_the_math_path(assert_trains_alike_under_bf16):
    """The band kernel's backward runs outside autocast; its softmax stays in fp32 like the math path's."""
    torch.manual_seed(0)
    fast = build_model(GPTConfig(**TINY, attn_window=70))
    reference = build_model(GPTConfig(**TINY, attn_window=70, attn_backend="math"))
    reference.load_state_dict(fast.state_dict())
    assert_trains_alike_under_bf16(fast, reference, torch.randint(0, 50, (2, 64)))
