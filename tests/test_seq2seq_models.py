"""The encoder-decoder families' own behaviour: presets, post-/pre-LN, label smoothing, T5's
relative position buckets, the inverse square root schedule, span corruption."""

import math

import pytest
import torch
import torch.nn.functional as F

from attnlab.data.span_corruption import span_corruption
from attnlab.errors import UserError
from attnlab.layers import relative_position_bucket
from attnlab.models import EncoderDecoder, T5, TransformerConfig, build_model, preset
from attnlab.training import lr_at


def test_transformer_base_preset_has_the_paper_sizes():
    c = preset("transformer-base")
    assert (c.d_model, c.n_head, c.ffn_hidden, c.n_encoder_layer, c.n_decoder_layer) == (512, 8, 2048, 6, 6)
    assert (c.prenorm, c.scale_embedding, c.position_layout, c.label_smoothing) == (False, True, "interleaved", 0.1)


def test_post_ln_blocks_end_in_a_norm_and_pre_ln_stacks_have_a_final_norm():
    post = build_model(preset("transformer-tiny", dropout=0.0)).eval()
    pre = build_model(preset("transformer-tiny", dropout=0.0, prenorm=True)).eval()
    x = torch.randint(3, 100, (2, 6))
    memory = post.encode(x)
    # post-LN: every encoder output position is layer-normalised (zero mean, unit variance)
    assert memory.mean(-1).abs().max() < 1e-5 and (memory.var(-1, unbiased=False) - 1).abs().max() < 1e-3
    assert isinstance(pre.encoder_norm, torch.nn.LayerNorm) and isinstance(post.encoder_norm, torch.nn.Identity)


def test_shared_embeddings_and_tied_output_are_one_tensor_and_saved_once():
    from attnlab.checkpoint import weights_for_saving

    shared = build_model(preset("transformer-tiny"))
    assert shared.src_emb.weight is shared.tgt_emb.weight is shared.lm_head.weight
    assert "src_emb.weight" in weights_for_saving(shared) and "lm_head.weight" not in weights_for_saving(shared)
    separate = build_model(preset("transformer-tiny", tgt_vocab_size=100, share_embeddings=False))
    assert separate.src_emb.weight.shape[0] == 256 and separate.lm_head.weight.shape[0] == 100
    with pytest.raises(UserError, match="share_embeddings"):
        preset("transformer-tiny", tgt_vocab_size=100)


def test_label_smoothed_loss():
    model = build_model(preset("transformer-tiny", dropout=0.0, label_smoothing=0.1)).eval()
    src, labels = torch.randint(3, 200, (2, 5)), torch.randint(3, 200, (2, 4))
    labels[1, 3] = -100
    out = model(src, labels=labels)
    log_probs = out.logits.log_softmax(-1)[labels != -100]  # (N, V)
    target = labels[labels != -100]
    nll = -log_probs.gather(1, target[:, None]).squeeze(1)
    expected = (0.9 * nll - 0.1 * log_probs.mean(-1)).mean()
    assert torch.allclose(out.loss, expected, atol=1e-5)
    plain = build_model(preset("transformer-tiny", dropout=0.0, label_smoothing=0.0)).eval()
    plain.load_state_dict(model.state_dict())
    assert torch.allclose(plain(src, labels=labels).loss, F.cross_entropy(out.logits[labels != -100], target))


def test_t5_buckets_match_hugging_face():
    T5Attention = pytest.importorskip("transformers.models.t5.modeling_t5").T5Attention
    relative = torch.arange(-300, 300)[None, :] - torch.arange(0, 5)[:, None]
    for bidirectional in (True, False):
        for buckets, distance in ((32, 128), (8, 20)):
            ours = relative_position_bucket(relative, bidirectional, buckets, distance)
            theirs = T5Attention._relative_position_bucket(relative, bidirectional, buckets, distance)
            assert torch.equal(ours, theirs)


def test_t5_position_bias_is_computed_once_per_stack():
    model = build_model(preset("t5-tiny", dropout=0.0)).eval()
    calls = []
    model.encoder_bias.register_forward_hook(lambda *a: calls.append("enc"))
    model.decoder_bias.register_forward_hook(lambda *a: calls.append("dec"))
    model(torch.randint(3, 200, (2, 5)), decoder_input_ids=torch.randint(3, 200, (2, 4)))
    assert calls == ["enc", "dec"] and len(model.encoder_blocks) == 2
    assert all(p.bias is None for block in model.encoder_blocks for p in block.modules()
               if isinstance(p, torch.nn.Linear))


def test_inverse_sqrt_schedule_peaks_at_warmup_then_decays_as_one_over_root_step():
    lrs = [lr_at(s, "inverse_sqrt", 1e-3, 0.0, 100, 1000) for s in range(1000)]
    assert max(lrs) == pytest.approx(1e-3) and lrs.index(max(lrs)) == 99
    assert lrs[399] == pytest.approx(1e-3 * math.sqrt(100 / 400))


def test_span_corruption_hides_15_percent_in_spans_of_three_and_can_be_undone():
    generator = torch.Generator().manual_seed(0)
    sentinels = list(range(1000, 900, -1))
    dropped, spans = 0, 0
    for length in (2, 7, 40, 200, 513):
        ids = list(range(length))
        inputs, targets = span_corruption(ids, sentinels, generator)
        # undo: put each sentinel's tokens back where the sentinel stands
        pieces, current = {}, None
        for token in targets:
            if token in sentinels:
                current = token
                pieces[current] = []
            else:
                pieces[current].append(token)
        restored = [t for token in inputs for t in (pieces[token] if token in sentinels else [token])]
        assert restored == ids
        dropped += len(targets) - len(pieces)
        spans += len(pieces)
        if length >= 40:
            assert abs((len(targets) - len(pieces)) / length - 0.15) < 0.02
    assert 2.0 <= dropped / spans <= 4.0


def test_config_errors_name_the_field():
    with pytest.raises(UserError, match="eos_id"):
        TransformerConfig(vocab_size=10, eos_id=10)
    with pytest.raises(UserError, match="position_layout"):
        TransformerConfig(position_layout="rotary")
    with pytest.raises(UserError, match="activation"):
        preset("t5-tiny", activation="swiglu")
    assert isinstance(build_model(preset("t5-tiny")), T5) and isinstance(build_model(preset("transformer-tiny")),
                                                                         EncoderDecoder)
