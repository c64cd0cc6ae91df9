"""Reformer and Transformer-XL through the causal-LM verbs: train, eval, generate."""

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from attnlab.checkpoint import save_checkpoint
from attnlab.cli import main
from attnlab.evaluation import perplexity
from attnlab.models import Reformer, ReformerConfig, TransformerXL, TransformerXLConfig
from attnlab.tokenizers import train_tokenizer

TEXT = "to be or not to be, that is the question. " * 40

MODELS = {
    "transformer_xl": ["model.family=transformer_xl", "model.max_seq_len=32", "model.segment_length=16",
                       "model.mem_len=16"],
    "reformer": ["model.family=reformer", "model.max_seq_len=32", "model.chunk_length=8", "model.n_buckets=4",
                 "model.axial_shape=[4,8]", "model.axial_dims=[8,8]"],
}


def test_recurrent_evaluation_scores_the_text_segment_by_segment():
    tokenizer = train_tokenizer("char", TEXT[:300])
    torch.manual_seed(0)
    model = TransformerXL(TransformerXLConfig(vocab_size=tokenizer.vocab_size, max_seq_len=32, segment_length=8,
                                              mem_len=8, n_layer=2, n_head=2, d_model=16)).eval()
    text = TEXT[:300]
    ids = torch.tensor(tokenizer.encode(text))
    with torch.no_grad():  # one call walks every segment with the memory carried along
        expected = F.cross_entropy(model(ids[None, :-1]).logits[0], ids[1:]).item()
    result = perplexity(model, tokenizer, text)
    assert result["tokens"] == len(ids) - 1
    assert result["loss"] == pytest.approx(expected, rel=1e-5)


def run(capsys, *args):
    """The verbs in-process (each subprocess costs seconds of interpreter start-up)."""
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr().out
    assert code == 0
    return json.loads(out)  # stdout holds the JSON alone; progress goes to stderr


@pytest.mark.parametrize("family", list(MODELS))
def test_train_eval_generate(tmp_path, capsys, family):
    data = tmp_path / "text.txt"
    data.write_text(TEXT)
    run_dir = tmp_path / "run"
    trained = run(capsys, "train", "--data", str(data), "--out", str(run_dir), *MODELS[family], "model.n_layer=2",
                  "model.n_head=2", "model.d_model=16", "train.max_steps=2", "train.eval_interval=2",
                  "train.eval_batches=1", "train.batch_size=2", "train.progress=false", "train.warmup_steps=0")
    assert trained["step"] == 2
    assert run(capsys, "eval", str(run_dir), "--data", str(data))["tokens"] == len(TEXT) - 1
    generated = run(capsys, "generate", str(run_dir), "--prompt", "to be", "--max-new-tokens", "40", "--seed", "1",
                    "--json")
    assert len(generated["completion"]) == 40  # past the 32-token window too
    beams = run(capsys, "generate", str(run_dir), "--prompt", "to be", "--max-new-tokens", "6", "--beams", "3",
                "--n-best", "2", "--length-penalty", "0.5", "--early-stopping", "true")
    assert beams["prompt"] == "to be" and len(beams["outputs"]) == 2
    assert beams["outputs"][0]["score"] >= beams["outputs"][1]["score"]


def test_bidirectional_reformer_cannot_generate(tmp_path):
    tokenizer = train_tokenizer("char", TEXT)
    config = ReformerConfig(vocab_size=tokenizer.vocab_size, causal=False, max_seq_len=32, n_layer=1, d_model=16,
                            n_head=2, chunk_length=8, n_buckets=4, axial_shape=[4, 8], axial_dims=[8, 8])
    save_checkpoint(tmp_path / "ckpt", Reformer(config), tokenizer)
    generated = subprocess.run([sys.executable, "-m", "attnlab.cli", "generate", str(tmp_path / "ckpt"), "--prompt",
                                "to"], capture_output=True, text=True, timeout=300)
    assert generated.returncode == 2
    assert "causal" in generated.stderr and "Traceback" not in generated.stderr
