import json

import pytest
import torch

import attnlab.checkpoint as checkpoint
from attnlab.checkpoint import load_checkpoint, save_checkpoint
from attnlab.errors import UserError
from attnlab.models import GPTConfig, build_model
from attnlab.tokenizers import CharTokenizer


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return build_model(GPTConfig(vocab_size=20, max_seq_len=16, n_layer=1, n_head=2, d_model=16, **overrides))


def same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_round_trip_keeps_weights_config_tokenizer_and_tying(tmp_path):
    model, tokenizer = tiny_model(), CharTokenizer("abcdefghijklmnopqrst")
    save_checkpoint(tmp_path / "ck", model, tokenizer)
    loaded, loaded_tok = load_checkpoint(tmp_path / "ck")
    assert same_weights(model, loaded) and loaded.config == model.config
    assert loaded.lm_head.weight is loaded.tok_emb.weight
    assert loaded_tok.decode(loaded_tok.encode("stab")) == "stab"
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]


def test_a_save_killed_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    good = tiny_model(seed=0)
    save_checkpoint(tmp_path / "ck", good)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # as if the process were stopped while writing weights

    monkeypatch.setattr(checkpoint, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "ck", tiny_model(seed=1))
    loaded, _ = load_checkpoint(tmp_path / "ck")
    assert same_weights(good, loaded)


def test_a_swap_interrupted_between_renames_is_recovered(tmp_path):
    good = tiny_model()
    save_checkpoint(tmp_path / "ck", good)
    (tmp_path / "ck").rename(tmp_path / "ck.old")  # the state right after the first rename
    loaded, _ = load_checkpoint(tmp_path / "ck")
    assert same_weights(good, loaded)


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "model.safetensors").write_bytes(b"\x00garbage"), "not a readable safetensors file"),
    (lambda d: (d / "config.json").write_text("{not json"), "not valid JSON"),
    (lambda d: (d / "config.json").unlink(), "is not a checkpoint"),
    (lambda d: (d / "config.json").write_text(json.dumps({"family": "resnet"})), "unknown model family 'resnet'"),
    (lambda d: (d / "config.json").write_text(json.dumps({"family": "gpt", "d_model": 16, "n_head": 3})),
     "divisible by n_head"),
])
def test_damaged_checkpoints_give_one_clear_error(tmp_path, damage, message):
    save_checkpoint(tmp_path / "ck", tiny_model())
    damage(tmp_path / "ck")
    with pytest.raises(UserError, match=message):
        load_checkpoint(tmp_path / "ck")


def test_weights_that_do_not_fit_the_config_are_named(tmp_path):
    save_checkpoint(tmp_path / "ck", tiny_model())
    config = json.loads((tmp_path / "ck" / "config.json").read_text())
    (tmp_path / "ck" / "config.json").write_text(json.dumps({**config, "d_model": 32, "n_layer": 2}))
    with pytest.raises(UserError, match=r"missing: blocks\.1\..*wrong shape \(file vs model\): blocks\.0\.ffn\.down\.bias \(16,\) vs \(32,\)"):
        load_checkpoint(tmp_path / "ck")


def test_a_checkpoint_of_another_family_is_refused(tmp_path):
    save_checkpoint(tmp_path / "ck", tiny_model())
    with pytest.raises(UserError, match="holds a gpt model; this command needs bert"):
        load_checkpoint(tmp_path / "ck", families=("bert",))
