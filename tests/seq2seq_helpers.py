"""Small random Hugging Face seq2seq models and their attnlab twins, for parity tests."""

import torch

from attnlab.interop import import_hf


def spread_weights(model, seed=0, std=0.3):
    """Random weights with enough spread that next-token choices are clear-cut (no near-ties)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad:  # fixed tables, e.g. sinusoidal positions
                continue
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=generator))
            else:
                p.copy_(std * torch.randn(p.shape, generator=generator))
    return model


def hf_t5(activation="relu", seed=0, decoder_layers=3):
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(vocab_size=48, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=decoder_layers,
                      num_heads=4,
                      relative_attention_num_buckets=8, relative_attention_max_distance=20, dropout_rate=0.0,
                      feed_forward_proj=activation, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(seed)
    return spread_weights(T5ForConditionalGeneration(config).eval(), seed)


def hf_marian(activation="swish", scale_embedding=True, shared=True, seed=0):
    from transformers import MarianConfig, MarianMTModel

    config = MarianConfig(vocab_size=48, decoder_vocab_size=48 if shared else 40, d_model=32, encoder_layers=2,
                          decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                          decoder_ffn_dim=64, max_position_embeddings=64, dropout=0.0, activation_function=activation,
                          scale_embedding=scale_embedding, share_encoder_decoder_embeddings=shared, pad_token_id=2,
                          eos_token_id=1, decoder_start_token_id=2, forced_eos_token_id=None)
    torch.manual_seed(seed)
    model = spread_weights(MarianMTModel(config).eval(), seed, std=0.15)
    with torch.no_grad():
        model.final_logits_bias.normal_(0, 0.5)
    return model


def twin(hf_model, tmp_path):
    """Save the HF model and import it into attnlab through the key map."""
    hf_model.save_pretrained(tmp_path)
    return import_hf(tmp_path, with_tokenizer=False)[0]


def padded_batch(vocab=48, seed=1):
    """Source and target batches padded on the right, with masks: (src, src_mask, tgt, tgt_mask)."""
    generator = torch.Generator().manual_seed(seed)
    src = torch.randint(3, vocab, (3, 9), generator=generator)
    src_mask = torch.ones_like(src)
    src_mask[1, 6:] = 0
    src_mask[2, 3:] = 0
    tgt = torch.randint(3, 40, (3, 7), generator=generator)
    tgt_mask = torch.ones_like(tgt)
    tgt_mask[0, 5:] = 0
    tgt_mask[2, 2:] = 0
    return src * src_mask, src_mask, tgt * tgt_mask, tgt_mask
