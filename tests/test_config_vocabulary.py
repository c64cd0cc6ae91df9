"""One config vocabulary across families, and the old names that still load.

Checkpoints written before the rename name fields as the code of the time did (GPT's
block_size, T5's d_ff, ...); they must build the same model as the current names."""

import dataclasses
import json

import pytest
import torch

from attnlab.checkpoint import load_checkpoint, save_checkpoint
from attnlab.errors import UserError
from attnlab.models.base import FAMILIES, build_model, config_from_dict, preset

# current field -> the name config.json used for it before, per family (written out, not read from `aliases`)
OLD_NAMES = {
    "gpt": {"max_seq_len": "block_size"},
    "transformer_xl": {"max_seq_len": "block_size"},
    "reformer": {"max_seq_len": "block_size"},
    "t5": {"ffn_hidden": "d_ff", "head_dim": "d_kv", "tie_weights": "tie_word_embeddings",
           "max_seq_len": "max_source_len"},
    "transformer": {"tie_weights": "tie_output"},
    "bigbird": {"sparse_block_size": "block_size"},
}
OLD_ONLY = {"block_size", "d_ff", "d_kv", "tie_output", "tie_word_embeddings", "max_source_len"}


def tiny_model(family):
    config = preset(FAMILIES[family].tiny_preset)
    if family in ("t5", "transformer"):
        config = config.replace(tie_weights=False)  # not the default, so the old name's value must get through
    torch.manual_seed(0)
    return build_model(config).eval()


@pytest.mark.parametrize("family", sorted(OLD_NAMES))
def test_checkpoint_with_old_field_names_builds_the_same_model(family, tmp_path):
    model = tiny_model(family)
    save_checkpoint(tmp_path, model)
    written = json.loads((tmp_path / "config.json").read_text())
    old = {OLD_NAMES[family].get(key, key): value for key, value in written.items()}
    assert set(OLD_NAMES[family].values()) <= set(old) and not set(OLD_NAMES[family]) & set(old)
    (tmp_path / "config.json").write_text(json.dumps(old))

    loaded, _ = load_checkpoint(tmp_path)
    assert loaded.config == model.config
    batch = FAMILIES[family].example_batch(model.config, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)


def test_no_family_uses_an_old_name_and_every_one_has_a_context_length():
    for name, spec in FAMILIES.items():
        config = preset(spec.tiny_preset)
        fields = {f.name for f in dataclasses.fields(config)}
        assert not fields & OLD_ONLY, name
        assert isinstance(config.max_seq_len, int) and config.max_seq_len > 0, name


def test_old_names_work_in_overrides_and_both_names_are_one_error():
    assert preset("gpt-tiny", block_size=32).max_seq_len == 32
    assert preset("bigbird-mlm-tiny", block_size=16).sparse_block_size == 16
    t5 = preset("t5-tiny", d_ff=96, d_kv=8, max_source_len=40)
    assert (t5.ffn_hidden, t5.head_dim, t5.max_seq_len, t5.max_target_len) == (96, 8, 40, 128)
    with pytest.raises(UserError, match="^gpt config: block_size is the old name of max_seq_len; give only "
                                        "max_seq_len$"):
        preset("gpt-tiny", block_size=32, max_seq_len=32)
    with pytest.raises(UserError, match="tie_output is the old name of tie_weights"):
        config_from_dict({"family": "transformer", "tie_output": False, "tie_weights": False})


def test_context_length_is_derived_from_the_position_table_where_there_is_one():
    bert = preset("roberta-base", max_positions=66)
    assert bert.max_seq_len == 64  # RoBERTa counts positions from pad_token_id + 1
    assert preset("transformer-tiny", max_positions=40).max_seq_len == 40
    with pytest.raises(UserError, match="unknown field"):
        preset("bert-mlm-tiny", max_seq_len=32)  # a property, not a field: set max_positions
