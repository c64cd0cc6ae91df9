"""LoRA, quantisation, pruning and distillation on a tiny GPT built from the shared layers."""

import pytest
import torch
from torch import nn

from attnlab.checkpoint import load_checkpoint, save_checkpoint
from attnlab.compression import (Distiller, distillation_loss, inject_lora, iterative_prune, keep_pruned,
                                 load_lora, make_student, merge_lora, prepare_qat, prune_magnitude,
                                 prune_structured, quantize_model, save_lora, sparsity_report, unmerge_lora)
from attnlab.compression.quantize import Int8Linear, convert_qat, linear_weight_bytes, quantize_per_channel
from attnlab.errors import UserError
from attnlab.models import GPT, GPTConfig, build_model, preset


def tiny_gpt(seed=0, **overrides):
    torch.manual_seed(seed)
    config = dict(vocab_size=50, max_seq_len=16, n_layer=4, n_head=4, d_model=32)
    return GPT(GPTConfig(**{**config, **overrides})).eval()


def batch(seed=1, b=3, t=10):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 50, (b, t), generator=g)
    return {"input_ids": ids, "targets": torch.roll(ids, -1, dims=1)}


def logits(model, data=None):
    with torch.no_grad():
        return model(input_ids=(data or batch())["input_ids"]).logits


def randomise_lora(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_b" in name:
                p.normal_(0, 0.1)


# -- LoRA --------------------------------------------------------------------------------

def test_lora_starts_as_base_and_merge_unmerge_round_trips():
    model = tiny_gpt()
    base = logits(model)
    base_weight = model.blocks[0].self_attn.q_proj.weight.detach().clone()
    inject_lora(model, rank=4, alpha=8, targets="q,v,ffn")
    assert torch.equal(logits(model), base)  # B = 0
    randomise_lora(model)
    adapted = logits(model)
    assert (adapted - base).abs().max() > 1e-3
    merge_lora(model)
    assert torch.allclose(logits(model), adapted, atol=1e-5)
    assert not torch.equal(model.blocks[0].self_attn.q_proj.weight, base_weight)
    unmerge_lora(model)
    assert torch.allclose(model.blocks[0].self_attn.q_proj.weight, base_weight, atol=1e-6)
    assert torch.allclose(logits(model), adapted, atol=1e-5)
    merge_lora(model, remove=True)
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert type(model.blocks[0].self_attn.q_proj) is nn.Linear
    assert torch.allclose(logits(model), adapted, atol=1e-5)


def test_only_lora_parameters_get_gradients():
    model = tiny_gpt(d_model=64)
    inject_lora(model, rank=2, targets=("q", "k", "v", "o"))
    model.train()
    model(**batch()).loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad and all(".lora_" in n for n in with_grad)
    assert len(with_grad) == 4 * 4 * 2  # 4 layers x 4 projections x (A, B)
    assert model.num_parameters(trainable_only=True) < 0.15 * model.num_parameters()


def test_lora_file_holds_only_adapters_and_reloads_onto_its_base(tmp_path):
    model = tiny_gpt()
    inject_lora(model, rank=4, targets="q,v", train_also=("norm_f",))
    randomise_lora(model)
    with torch.no_grad():
        model.norm_f.weight.add_(0.5)
    expected = logits(model)
    save_lora(model, tmp_path / "adapter.safetensors")
    from safetensors.torch import load_file
    keys = set(load_file(tmp_path / "adapter.safetensors"))
    assert keys == {n for n, _ in model.named_parameters() if ".lora_" in n} | {"norm_f.weight", "norm_f.bias"}

    fresh = load_lora(tiny_gpt(), tmp_path / "adapter.safetensors")
    assert torch.allclose(logits(fresh), expected, atol=1e-6)


def test_lora_with_biases_trains_saves_and_reloads_every_bias(tmp_path):
    model = tiny_gpt(bias=True)
    inject_lora(model, rank=2, targets="q,v", train_biases=True)
    model.train()
    model(**batch()).loss.backward()
    biases = {n for n, _ in model.named_parameters() if n.endswith(".bias")}
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert biases and with_grad == biases | {n for n, _ in model.named_parameters() if ".lora_" in n}
    randomise_lora(model)
    with torch.no_grad():
        for name in biases:
            model.get_parameter(name).add_(0.1)
    expected = logits(model.eval())
    save_lora(model, tmp_path / "adapter.safetensors")
    fresh = load_lora(tiny_gpt(bias=True), tmp_path / "adapter.safetensors")
    assert torch.allclose(logits(fresh), expected, atol=1e-6)


def test_lora_file_for_another_base_is_refused(tmp_path):
    model = tiny_gpt()
    inject_lora(model, rank=4)
    save_lora(model, tmp_path / "a.safetensors")
    with pytest.raises(UserError, match="another base.*d_model"):
        load_lora(tiny_gpt(d_model=64), tmp_path / "a.safetensors")
    other = tiny_gpt(seed=5)  # same shapes, different weights
    with pytest.raises(UserError, match="different weights"):
        load_lora(other, tmp_path / "a.safetensors")
    assert not any("lora" in n for n, _ in other.named_parameters())  # left untouched
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="not a readable"):
        load_lora(tiny_gpt(), tmp_path / "junk.safetensors")


def test_lora_model_checkpoint_round_trips(tmp_path):
    model = tiny_gpt()
    inject_lora(model, rank=4, targets="q,v")
    randomise_lora(model)
    save_checkpoint(tmp_path / "ck", model)
    loaded, _ = load_checkpoint(tmp_path / "ck")
    assert torch.equal(logits(loaded), logits(model))


# -- quantisation ------------------------------------------------------------------------

def test_int8_weight_only_matmul_within_quantisation_bound():
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    x = torch.randn(5, 64)
    q, scale = quantize_per_channel(linear.weight)
    assert ((q.float() * scale[:, None] - linear.weight).abs() <= scale[:, None] / 2 + 1e-7).all()
    quantized = Int8Linear.from_linear(linear)
    error = (quantized(x) - linear(x)).abs()
    bound = x.abs() @ (scale[:, None] / 2).expand(-1, 64).T  # sum_j |x_j| * scale_i / 2
    assert (error <= bound + 1e-5).all()
    assert error.max() > 0  # it really is quantised
    assert quantized.weight_q.dtype == torch.int8


@pytest.mark.parametrize("scheme,tolerance", [("int8", 0.05), ("dynamic_int8", 0.1), ("int4", 0.3),
                                              ("static_int8", 0.3)])
def test_quantised_model_is_close_smaller_and_reloads_with_same_outputs(tmp_path, scheme, tolerance):
    model = tiny_gpt()
    reference = logits(model)
    float_bytes = linear_weight_bytes(model)
    calibration = [{"input_ids": batch(seed=s)["input_ids"]} for s in range(4)]
    quantize_model(model, scheme, calibration=calibration if scheme == "static_int8" else None)
    out = logits(model)
    assert (out - reference).abs().max() < tolerance * reference.abs().max()
    assert linear_weight_bytes(model) < float_bytes / (6 if scheme == "int4" else 3.5)
    save_checkpoint(tmp_path / "q", model)
    loaded, _ = load_checkpoint(tmp_path / "q")
    assert torch.equal(logits(loaded), out)


def test_static_quantisation_needs_calibration():
    with pytest.raises(UserError, match="calibration"):
        quantize_model(tiny_gpt(), "static_int8")
    with pytest.raises(UserError, match="unknown quantisation scheme"):
        quantize_model(tiny_gpt(), "int3")


def test_qat_trains_through_fake_quant_and_converts(tmp_path):
    model = tiny_gpt()
    prepare_qat(model)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = model(**batch()).loss
    loss.backward()
    assert model.blocks[0].ffn.up.weight.grad.abs().sum() > 0  # straight-through gradients
    optimizer.step()
    model.eval()
    fake = logits(model)
    save_checkpoint(tmp_path / "qat", model)  # mid-QAT checkpoints keep the learned ranges
    assert torch.equal(logits(load_checkpoint(tmp_path / "qat")[0]), fake)
    convert_qat(model)
    assert isinstance(model.blocks[0].ffn.up, nn.Module) and model.blocks[0].ffn.up.scheme == "static_int8"
    assert (logits(model) - fake).abs().max() < 0.1 * fake.abs().max()


# -- pruning -----------------------------------------------------------------------------

def test_structured_pruning_removes_heads_and_neurons_and_reloads(tmp_path):
    model = tiny_gpt()
    before = model.num_parameters()
    report = prune_structured(model, amount=0.5, importance="taylor", batches=[batch(seed=s) for s in range(2)])
    assert sum(report["heads_after"]) == 8 and sum(report["ffn_after"]) == 256
    attention = model.blocks[0].self_attn
    assert attention.q_proj.weight.shape == (attention.n_head * 8, 32)
    assert attention.out_proj.weight.shape == (32, attention.n_head * 8)
    assert model.blocks[0].ffn.down.weight.shape[1] == report["ffn_after"][0]
    assert model.num_parameters() == report["parameters_after"] < before
    out = logits(model)
    assert torch.isfinite(out).all() and out.shape == (3, 10, 50)
    save_checkpoint(tmp_path / "pruned", model)
    loaded, _ = load_checkpoint(tmp_path / "pruned")
    assert loaded.num_parameters() == model.num_parameters()
    assert torch.equal(logits(loaded), out)


def test_pruning_an_unimportant_head_keeps_the_output():
    model = tiny_gpt(n_layer=1)
    with torch.no_grad():  # make head 2 do nothing: its output columns are zero
        model.blocks[0].self_attn.out_proj.weight[:, 16:24] = 0
    reference = logits(model)
    prune_structured(model, amount=0.25, neurons=False, importance="magnitude")
    assert model.blocks[0].self_attn.n_head == 3
    assert torch.allclose(logits(model), reference, atol=1e-5)


def test_iterative_pruning_reaches_target_and_finetunes_between_rounds():
    model = tiny_gpt()
    calls = []
    iterative_prune(model, target=0.5, rounds=2, finetune=calls.append)
    assert len(calls) == 2
    assert sum(m.n_head for m in (b.self_attn for b in model.blocks)) == 8


def test_magnitude_pruning_reports_sparsity_honestly_and_stays_sparse():
    model = tiny_gpt()
    masks = prune_magnitude(model, 0.6)
    report = sparsity_report(model)
    assert report["targeted_sparsity"] == pytest.approx(0.6, abs=1e-3)
    assert report["model_sparsity"] < report["targeted_sparsity"]  # embeddings and norms are dense
    keep_pruned(model, masks)
    model.train()
    model(**batch()).loss.backward()
    torch.optim.AdamW(model.parameters(), lr=0.1).step()
    assert sparsity_report(model)["targeted_zeros"] == report["targeted_zeros"]


# -- distillation ------------------------------------------------------------------------

def test_distillation_loss_is_zero_for_identical_models():
    teacher = tiny_gpt()
    student = tiny_gpt()
    loss = Distiller(teacher, student, temperature=3.0, alpha=0.0, hidden_weight=1.0)(student, batch())
    assert loss.total.item() == 0.0 and loss.soft.item() == 0.0 and loss.hidden.item() == 0.0
    different = tiny_gpt(seed=3)
    loss = Distiller(teacher, different, alpha=0.0, hidden_weight=1.0)(different, batch())
    assert loss.soft.item() > 0 and loss.hidden.item() > 0


def test_distillation_loss_mixes_hard_and_soft_terms():
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    hard = torch.tensor(2.0)
    loss = distillation_loss(s, t, hard, temperature=2.0, alpha=0.25)
    kl = (t.div(2).softmax(-1) * (t.div(2).log_softmax(-1) - s.div(2).log_softmax(-1))).sum(-1).mean() * 4
    assert loss.total.item() == pytest.approx(0.25 * 2.0 + 0.75 * kl.item(), rel=1e-5)


def test_student_from_teacher_layers_and_training_step():
    teacher = tiny_gpt(n_layer=6)
    student = make_student(teacher, 3)
    assert student.config.n_layer == 3 and len(student.blocks) == 3
    assert torch.equal(student.blocks[1].ffn.up.weight, teacher.blocks[2].ffn.up.weight)  # map [0, 2, 5]
    assert torch.equal(student.blocks[2].ffn.up.weight, teacher.blocks[5].ffn.up.weight)
    assert torch.equal(student.tok_emb.weight, teacher.tok_emb.weight)
    fresh = make_student(teacher, 2, init="fresh")
    assert not torch.equal(fresh.blocks[0].ffn.up.weight, teacher.blocks[0].ffn.up.weight)
    distiller = Distiller(teacher, student, hidden_weight=0.5)
    student.train()
    distiller(student, batch()).total.backward()
    assert student.blocks[0].ffn.up.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    with pytest.raises(UserError, match="between 1 and 6"):
        make_student(teacher, 7)


def test_reformer_student_keeps_the_attention_kind_of_each_kept_layer():
    torch.manual_seed(0)
    teacher = build_model(preset("reformer-tiny", n_layer=4, attn_layers=["local", "lsh", "lsh", "local"])).eval()
    student = make_student(teacher, 2)  # default map [0, 3]
    assert student.config.n_layer == 2 and student.config.attn_layers == ["local", "local"]
    assert torch.equal(student.layers.blocks[1].f.attn.q_proj.weight, teacher.layers.blocks[3].f.attn.q_proj.weight)
    mapped = make_student(teacher, 2, layer_map=[1, 3])
    assert mapped.config.attn_layers == ["lsh", "local"]
    assert torch.equal(mapped.layers.blocks[0].f.attn.qk_proj.weight, teacher.layers.blocks[1].f.attn.qk_proj.weight)
    student.train()
    loss = Distiller(teacher, student, hidden_weight=0.5)(student, batch())
    loss.total.backward()
    assert torch.isfinite(loss.total) and student.layers.blocks[0].g.ffn.up.weight.grad is not None


@pytest.mark.parametrize("name", ["transformer-tiny", "t5-tiny"])
def test_encoder_decoder_student_is_a_one_line_refusal(name):
    with pytest.raises(UserError, match="has two depths"):
        make_student(build_model(preset(name)), 1)
