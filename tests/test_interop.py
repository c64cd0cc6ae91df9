"""Hugging Face interop parity: random small HF models -> attnlab, and attnlab -> export -> HF.

Same weights in, same numbers out (fp32, max abs diff <= 1e-5) on a padded batch.
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

from attnlab.errors import UserError  # noqa: E402
from attnlab.interop import export_hf, import_hf  # noqa: E402
from attnlab.models import build_model, preset  # noqa: E402

TOL = 1e-5
SMALL = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
             max_position_embeddings=40, num_labels=3)
HF_CONFIGS = {
    "bert": lambda: transformers.BertConfig(**SMALL, type_vocab_size=2),
    "roberta": lambda: transformers.RobertaConfig(**SMALL, type_vocab_size=1, pad_token_id=1, bos_token_id=0,
                                                  eos_token_id=2),
    "distilbert": lambda: transformers.DistilBertConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, hidden_dim=48,
                                                        max_position_embeddings=40, num_labels=3),
}
HEAD_CLASSES = {"none": "Model", "mlm": "ForMaskedLM", "sequence": "ForSequenceClassification",
                "token": "ForTokenClassification", "qa": "ForQuestionAnswering", "pretraining": "ForPreTraining"}
PREFIX = {"bert": "Bert", "roberta": "Roberta", "distilbert": "DistilBert"}
CASES = [(fam, head) for fam in PREFIX for head in HEAD_CLASSES if not (head == "pretraining" and fam != "bert")]


def padded_batch(pad_id, types=True):
    torch.manual_seed(1)
    ids = torch.randint(3, 64, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    ids = ids.masked_fill(mask == 0, pad_id)
    batch = {"input_ids": ids, "attention_mask": mask}
    if types:
        batch["token_type_ids"] = (torch.arange(9) >= 4).long().expand(3, 9) * mask
    return batch


def hf_model(family, head):
    torch.manual_seed(0)
    cls = getattr(transformers, PREFIX[family] + HEAD_CLASSES[head])
    config = HF_CONFIGS[family]()
    if head == "qa":
        config.num_labels = 2  # start and end
    model = cls(config)
    with torch.no_grad():  # HF zero-inits biases and unit-inits norms: randomise them so parity means something
        for name, p in model.named_parameters():
            if "bias" in name or "LayerNorm" in name or "layer_norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def hf_outputs(model, head, batch):
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    hidden = out.hidden_states[-1]
    if head == "none":
        return hidden, getattr(out, "pooler_output", None)
    if head == "qa":
        return hidden, torch.stack([out.start_logits, out.end_logits], dim=-1)
    if head == "pretraining":
        return hidden, torch.cat([out.prediction_logits.flatten(), out.seq_relationship_logits.flatten()])
    return hidden, out.logits


def our_outputs(model, head, batch):
    with torch.no_grad():
        out = model(**batch)
    if head == "none":
        return out.hidden_states, model.pool(out.hidden_states) if model.pooler is not None else None
    if head == "pretraining":
        return out.hidden_states, torch.cat([out.logits.flatten(), out.aux_logits.flatten()])
    return out.hidden_states, out.logits


def assert_close(a, b):
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= TOL


@pytest.mark.parametrize("family,head", CASES)
def test_parity_both_directions(tmp_path, family, head):
    """HF -> attnlab gives HF's numbers; attnlab (changed) -> export -> HF gives attnlab's numbers."""
    reference = hf_model(family, head)
    reference.save_pretrained(tmp_path / "hf")
    ours, _ = import_hf(tmp_path / "hf")
    assert ours.config.head == head
    batch = padded_batch(ours.config.pad_token_id, types=family == "bert")
    check_outputs(ours, reference, head, batch)

    with torch.no_grad():  # move away from the imported numbers so the export is really checked
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    export_hf(ours, tmp_path / "out")
    cls = getattr(transformers, PREFIX[family] + HEAD_CLASSES[head])
    check_outputs(ours, cls.from_pretrained(tmp_path / "out").eval(), head, batch)
    if head == "mlm":  # the generic loader strips the head and finds the encoder
        base = transformers.AutoModel.from_pretrained(tmp_path / "out").eval()
        with torch.no_grad():
            assert_close(ours(**batch).hidden_states, base(**batch).last_hidden_state)


def check_outputs(ours, theirs, head, batch):
    for ref, mine in zip(hf_outputs(theirs, head, batch), our_outputs(ours, head, batch)):
        assert (ref is None) == (mine is None)
        if ref is not None:
            assert_close(mine, ref)


def gpt2_config():
    return transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                   bos_token_id=0, eos_token_id=0)


def gpt2_check(ours, theirs):
    torch.manual_seed(2)
    ids = torch.randint(0, 64, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # right padding: compare the real positions
    with torch.no_grad():
        mine = ours(ids, attention_mask=mask).logits
        ref = theirs(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert_close(mine[real], ref[real])


def test_gpt2_import_and_export(tmp_path):
    torch.manual_seed(0)
    reference = transformers.GPT2LMHeadModel(gpt2_config()).eval()
    reference.save_pretrained(tmp_path / "hf")
    ours, _ = import_hf(tmp_path / "hf")
    assert ours.config.family == "gpt" and ours.config.activation == "gelu_tanh"
    gpt2_check(ours, reference)
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    export_hf(ours, tmp_path / "out")
    gpt2_check(ours, transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval())
    base = transformers.AutoModel.from_pretrained(tmp_path / "out")
    assert isinstance(base, transformers.GPT2Model)


def test_pytorch_bin_checkpoint_loads(tmp_path):
    """Old-style checkpoints: pytorch_model.bin, read with torch.load(weights_only=True)."""
    reference = hf_model("bert", "none")
    reference.config.save_pretrained(tmp_path)
    torch.save(reference.state_dict(), tmp_path / "pytorch_model.bin")
    ours, _ = import_hf(tmp_path)
    batch = padded_batch(0)
    with torch.no_grad():
        assert_close(ours(**batch).hidden_states, reference(**batch).last_hidden_state)


# -- bad checkpoints: one clear error that names the problem ------------------------------------

@pytest.fixture
def bert_dir(tmp_path):
    hf_model("bert", "none").save_pretrained(tmp_path / "ck")
    return tmp_path / "ck"


def _rewrite_weights(directory, change):
    from safetensors.torch import load_file, save_file
    weights = load_file(directory / "model.safetensors")
    change(weights)
    save_file(weights, directory / "model.safetensors")


def test_missing_tensor_is_named(bert_dir):
    _rewrite_weights(bert_dir, lambda w: w.pop("encoder.layer.1.output.dense.weight"))
    with pytest.raises(UserError, match=r"missing: encoder\.layer\.1\.output\.dense\.weight"):
        import_hf(bert_dir)


def test_unexpected_tensor_is_named(bert_dir):
    _rewrite_weights(bert_dir, lambda w: w.update({"encoder.layer.7.extra.weight": torch.zeros(2)}))
    with pytest.raises(UserError, match=r"unexpected: encoder\.layer\.7\.extra\.weight"):
        import_hf(bert_dir)


def test_misshaped_tensor_is_named(bert_dir):
    _rewrite_weights(bert_dir, lambda w: w.update({"embeddings.word_embeddings.weight": torch.zeros(65, 32)}))
    with pytest.raises(UserError, match=r"wrong shape: embeddings\.word_embeddings\.weight \(65, 32\), expected \(64, 32\)"):
        import_hf(bert_dir)


def test_all_problems_in_one_error(bert_dir):
    def damage(w):
        w.pop("pooler.dense.bias")
        w["surprise"] = torch.zeros(1)
    _rewrite_weights(bert_dir, damage)
    with pytest.raises(UserError, match=r"missing: pooler\.dense\.bias; unexpected: surprise"):
        import_hf(bert_dir)


@pytest.mark.parametrize("damage,message", [
    (lambda d: (d / "config.json").unlink(), "has no config.json"),
    (lambda d: (d / "config.json").write_text("{not json"), "not valid JSON"),
    (lambda d: (d / "config.json").write_text('{"model_type": "xlnet"}'), "model_type 'xlnet' is not supported"),
    (lambda d: (d / "config.json").write_text((d / "config.json").read_text().replace("BertModel", "BertForMultipleChoice")),
     "BertForMultipleChoice' is not supported"),
    (lambda d: (d / "config.json").write_text((d / "config.json").read_text().replace('"hidden_size"', '"hidden"')),
     "lacks 'hidden_size'"),
    (lambda d: (d / "model.safetensors").unlink(), "has no weights"),
    (lambda d: (d / "model.safetensors").write_bytes(b"\x00garbage"), "cannot be read"),
])
def test_bad_checkpoint(bert_dir, damage, message):
    damage(bert_dir)
    with pytest.raises(UserError, match=message):
        import_hf(bert_dir)


def test_missing_directory(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        import_hf(tmp_path / "nope")


def test_export_refuses_a_non_empty_directory_and_keeps_it(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("precious")
    model = build_model(preset("bert-tiny", vocab_size=64))
    with pytest.raises(UserError, match="not empty"):
        export_hf(model, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "precious"


def test_export_rejects_a_shape_hugging_face_lacks(tmp_path):
    model = build_model(preset("llama-nano", vocab_size=64))
    with pytest.raises(UserError, match="GPT-2-shaped"):
        export_hf(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()
