"""CLIP (Radford et al. 2021): an image tower and a text tower trained so that matching pairs are close.

    image_embeds = normalise(W_v  ViT(pixels)[CLS])          ViT with CLIP's pre-LN over the tokens
    text_embeds  = normalise(W_t  text_tower(ids)[eot])      causal text transformer, pooled at the
                                                             end-of-text token (or a registered
                                                             encoder, mean-pooled: LiT)
    logits       = exp(min(s, ln 100)) image_embeds @ text_embeds^T       (B_images, B_texts)
    loss         = (CE(logits, diag) + CE(logits^T, diag)) / 2            in-batch negatives

The projections W_v, W_t have no bias; the logit scale s starts at ln(1 / 0.07) and is clamped at
ln 100 (unclamped, it grows until the softmax saturates and training stalls).

The text tower pools where the text ends, by Hugging Face's two rules: `argmax` (the legacy rule of
checkpoints whose eos_token_id is 2: the position of the largest id, which is the end-of-text token
in CLIP's vocabulary) or `eos` (the first position holding eos_token_id). Text is right-padded:
attention is causal, so padding after the end never reaches a real token and needs no mask.

`embed_chunk` > 0 trains with GradCache (Gao et al. 2021): each tower embeds the batch that many
rows at a time without gradients, the loss is taken over the whole batch's similarity matrix, and
the backward pass re-runs each chunk with gradients against the cached embedding gradients. Memory
is that of one chunk; the negatives are the whole batch, and the gradient is the same.
"""

import contextlib
import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..errors import UserError
from ..layers import FFN_KINDS, TransformerBlock, mean_pool
from ..layers.attention import BACKENDS
from ..processors.clip import ClipProcessor
from .base import DUAL_ENCODER, PRESETS, FamilySpec, Model, ModelOutput, build_model, config_from_dict, register
from .vit import ViT, ViTConfig

TEXT_POOLINGS = ("argmax", "eos", "mean")  # mean: the registered encoder tower's
FREEZE = ("none", "vision", "text")
MAX_LOGIT_SCALE = math.log(100.0)


@dataclasses.dataclass
class ClipConfig(ModelConfig):
    family = "clip"
    projection_dim: int = 512  # the shared embedding space
    # vision tower: a ViT
    image_size: int = 224
    patch_size: int = 32
    n_channels: int = 3
    vision_layers: int = 12
    vision_heads: int = 12
    vision_width: int = 768
    vision_ffn: int = None  # None: 4 * vision_width
    # text tower: a causal transformer ...
    vocab_size: int = 49408
    max_text_len: int = 77
    text_layers: int = 12
    text_heads: int = 8
    text_width: int = 512
    text_ffn: int = None  # None: 4 * text_width
    eos_token_id: int = 2
    text_pooling: str = "argmax"
    # ... or a registered bidirectional encoder (its config as a dict, e.g. BERT's), mean-pooled
    text_encoder: dict = None
    text_init: str = None  # "minilm": a new model's text tower starts from all-MiniLM-L6-v2 (training only)
    activation: str = "quick_gelu"
    norm_eps: float = 1e-5
    dropout: float = 0.0
    attn_dropout: float = 0.0
    logit_scale_init: float = math.log(1 / 0.07)
    freeze: str = "none"  # a tower kept as it is: no gradient, eval mode (LiT: freeze=text)
    embed_chunk: int = 0  # GradCache: embed at most this many rows at a time in training (0: all at once)
    attn_backend: str = "sdpa"

    def validate(self):
        self.require_positive("projection_dim", "image_size", "patch_size", "n_channels", "vision_layers",
                              "vision_heads", "vision_width", "vocab_size", "max_text_len", "text_layers",
                              "text_heads", "text_width")
        self.require_divisible("image_size", "patch_size")
        self.require_divisible("vision_width", "vision_heads")
        self.require_divisible("text_width", "text_heads")
        for name in ("vision_ffn", "text_ffn"):
            if getattr(self, name) is not None:
                self.require_positive(name)
        self.require_choice("text_pooling", TEXT_POOLINGS)
        if (self.text_pooling == "mean") != (self.text_encoder is not None):
            raise self.invalid("text_pooling=mean goes with a text_encoder (a registered encoder as the text tower), "
                               "and argmax or eos with the causal text tower")
        if self.text_encoder is not None and not isinstance(self.text_encoder, dict):
            raise self.invalid(f"text_encoder must be an encoder's config (a mapping), got {self.text_encoder!r}")
        self.require_choice("text_init", (None, "minilm"))
        self.require_choice("activation", tuple(k for k, (_, gated) in FFN_KINDS.items() if not gated))
        self.require_fraction("dropout", "attn_dropout")
        self.require_choice("freeze", FREEZE)
        if self.embed_chunk < 0:
            raise self.invalid(f"embed_chunk must be >= 0 rows (0: the whole batch at once), got {self.embed_chunk}")
        self.require_choice("attn_backend", BACKENDS)

    @property
    def max_seq_len(self) -> int:
        """The longest text in tokens."""
        if self.text_encoder is not None:
            return config_from_dict(self.text_encoder).max_seq_len
        return self.max_text_len

    def vision_config(self) -> ViTConfig:
        return ViTConfig(image_size=self.image_size, patch_size=self.patch_size, n_channels=self.n_channels,
                         n_layer=self.vision_layers, n_head=self.vision_heads, d_model=self.vision_width,
                         ffn_hidden=self.vision_ffn, activation=self.activation, norm_eps=self.norm_eps,
                         dropout=self.dropout, attn_dropout=self.attn_dropout, head="none", pre_norm=True,
                         patch_bias=False, attn_backend=self.attn_backend)


class CausalTextTower(nn.Module):
    """Token and learned position embeddings, pre-LN causal blocks, a final LayerNorm, pooled at
    the end-of-text token: (B, T) ids -> (B, text_width)."""

    def __init__(self, c: ClipConfig):
        super().__init__()
        self.pooling, self.eos_token_id = c.text_pooling, c.eos_token_id
        self.tok_emb = nn.Embedding(c.vocab_size, c.text_width)
        self.positions = nn.Parameter(torch.zeros(c.max_text_len, c.text_width))
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(c.text_width, c.text_heads, c.text_ffn or 4 * c.text_width, ffn_kind=c.activation,
                             norm_eps=c.norm_eps, prenorm=True, dropout=c.dropout, attn_dropout=c.attn_dropout,
                             backend=c.attn_backend)
            for _ in range(c.text_layers))
        self.norm = nn.LayerNorm(c.text_width, eps=c.norm_eps)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        t = input_ids.size(1)
        if t > self.positions.size(0):
            raise ValueError(f"text of {t} tokens exceeds max_text_len {self.positions.size(0)}")
        x = self.drop(self.tok_emb(input_ids) + self.positions[:t])  # (B, T, C)
        for block in self.blocks:
            x = block(x, causal=True)
        return self.norm(x)[torch.arange(len(x), device=x.device), self.end_of_text(input_ids)]  # (B, C)

    def end_of_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B,) the position each row is pooled at."""
        if self.pooling == "argmax":
            return input_ids.argmax(dim=-1)
        return (input_ids == self.eos_token_id).int().argmax(dim=-1)  # the first; 0 when there is none


class EncoderTextTower(nn.Module):
    """A registered bidirectional encoder (e.g. all-MiniLM-L6-v2) mean-pooled over real tokens."""

    def __init__(self, c: ClipConfig):
        super().__init__()
        self.encoder = build_model(config_from_dict({**c.text_encoder, "head": "none", "pooler": False}))

    def load_pretrained(self, encoder: Model):
        """Start from a pretrained encoder's weights (its pooler, unused here, left out)."""
        self.encoder.load_state_dict({k: v for k, v in encoder.state_dict().items() if not k.startswith("pooler.")})

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return mean_pool(self.encoder.encode(input_ids, attention_mask), attention_mask)  # (B, C)


class Clip(Model):
    def __init__(self, config: ClipConfig):
        super().__init__(config)
        c = config
        self.vision = ViT(c.vision_config())
        self.text = CausalTextTower(c) if c.text_encoder is None else EncoderTextTower(c)
        text_width = c.text_width if c.text_encoder is None else self.text.encoder.config.d_model
        self.vision_proj = nn.Linear(c.vision_width, c.projection_dim, bias=False)
        self.text_proj = nn.Linear(text_width, c.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(c.logit_scale_init)))
        self._init_weights()
        for tower in self.frozen_towers():
            tower.requires_grad_(False)

    def _init_weights(self, std: float = 0.02):
        """CLIP's (Radford et al.): attention and feed-forward inputs normal(0, width^-1/2 (2 n_layer)^-1/2),
        attention outputs width^-1/2, the feed-forward's up (2 width)^-1/2, embeddings 0.02 (the
        [CLS] width^-1/2), projections width^-1/2; zero biases. A registered encoder tower keeps its own."""
        for tower, n_layer in ((self.vision, self.config.vision_layers), (self.text, self.config.text_layers)):
            if isinstance(tower, EncoderTextTower):
                continue
            for block in tower.blocks:
                width = block.ffn.up.in_features
                inner = width ** -0.5 * (2 * n_layer) ** -0.5
                attn, ffn = block.self_attn, block.ffn
                for linear, linear_std in ((attn.q_proj, inner), (attn.k_proj, inner), (attn.v_proj, inner),
                                           (attn.out_proj, width ** -0.5), (ffn.up, (2 * width) ** -0.5),
                                           (ffn.down, inner)):
                    nn.init.normal_(linear.weight, std=linear_std)
                    nn.init.zeros_(linear.bias)
        nn.init.normal_(self.vision.patches.proj.weight, std=std)
        nn.init.normal_(self.vision.positions, std=std)
        nn.init.normal_(self.vision.cls_token, std=self.config.vision_width ** -0.5)
        if isinstance(self.text, CausalTextTower):
            nn.init.normal_(self.text.tok_emb.weight, std=std)
            nn.init.normal_(self.text.positions, std=std)
        for projection in (self.vision_proj, self.text_proj):
            nn.init.normal_(projection.weight, std=projection.in_features ** -0.5)

    def towers(self) -> dict:
        """name -> the modules of that tower: its encoder and its projection."""
        return {"vision": (self.vision, self.vision_proj), "text": (self.text, self.text_proj)}

    def frozen_towers(self) -> tuple:
        """The modules `freeze` keeps as they are."""
        return self.towers().get(self.config.freeze, ())

    def train(self, mode: bool = True):
        super().train(mode)
        for tower in self.frozen_towers():
            tower.eval()  # no dropout in a frozen tower
        return self

    # -- the two towers ---------------------------------------------------------------------------
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, projection_dim), not normalised."""
        hidden = self.vision.encode(pixel_values)  # (B, 1 + h * w, C), layer-normed
        return self.vision_proj(hidden[:, 0])

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) -> (B, projection_dim), not normalised."""
        return self.text_proj(self.text(input_ids, attention_mask))

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> unit-length embeddings (B, projection_dim)."""
        return F.normalize(self.image_features(pixel_values), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) right-padded ids -> unit-length embeddings (B, projection_dim)."""
        return F.normalize(self.text_features(input_ids, attention_mask), dim=-1)

    def encode(self, batch: dict) -> torch.Tensor:
        """Unit embeddings (B, projection_dim) of a batch of images ({"pixel_values"}) or of texts
        ({"input_ids", "attention_mask"})."""
        if "pixel_values" in batch:
            return self.encode_image(batch["pixel_values"])
        return self.encode_text(batch["input_ids"], batch.get("attention_mask"))

    def scale(self) -> torch.Tensor:
        """exp of the logit scale, clamped at 100."""
        return self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()

    # -- training ---------------------------------------------------------------------------------
    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                negative_ids: torch.Tensor | None = None, negative_mask: torch.Tensor | None = None,
                has_negative: torch.Tensor | None = None) -> ModelOutput:
        """B images (B, C, H, W) and their B captions (B, T) -> logits (B, B) (logits_per_image;
        logits_per_text is its transpose) and the symmetric contrastive loss, the other rows of
        the batch being each pair's negatives. A batch of one has no negatives and is refused.

        With hard negatives (negative_ids (B, T'), negative_mask, has_negative (B,) bool: which rows
        have one), each image also ranks the B hard negative captions (those of rows without one
        left out): logits (B, 2B), the image -> text loss over all 2B captions, text -> image over the
        B images as before (NegCLIP)."""
        rows = len(pixel_values)
        if rows < 2 or len(input_ids) != rows:
            raise UserError(f"contrastive training needs a batch of at least 2 image-text pairs (the other pairs are "
                            f"the negatives), got {rows} images and {len(input_ids)} texts")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        texts = (input_ids, attention_mask)
        if negative_ids is not None:
            texts = _stacked(texts, (negative_ids, torch.ones_like(negative_ids) if negative_mask is None
                                     else negative_mask))  # (2B, T)
        image = F.normalize(self._embed("vision", self.image_features, (pixel_values,)), dim=-1)
        text = F.normalize(self._embed("text", self.text_features, texts), dim=-1)
        logits = self.scale() * image @ text.T  # (B_images, B_texts or 2 B_texts)
        if negative_ids is not None and has_negative is not None:
            present = has_negative.bool()
            absent = torch.cat([torch.zeros_like(present), ~present])  # (2B,)
            logits = logits.masked_fill(absent, float("-inf"))
        targets = torch.arange(rows, device=logits.device)
        loss = (F.cross_entropy(logits.float(), targets) + F.cross_entropy(logits[:, :rows].T.float(), targets)) / 2
        return ModelOutput(logits=logits, loss=loss)

    def _embed(self, tower: str, features, inputs: tuple) -> torch.Tensor:
        """features(*inputs) (B, D): without a graph for a frozen tower, by GradCache chunks when
        training with embed_chunk set, else at once."""
        if tower == self.config.freeze:
            with torch.no_grad():
                return features(*inputs)
        chunk = self.config.embed_chunk
        if not (self.training and torch.is_grad_enabled() and 0 < chunk < len(inputs[0])):
            return features(*inputs)
        params = [p for module in self.towers()[tower] for p in module.parameters() if p.requires_grad]
        return GradCache.apply(features, chunk, len(inputs), *inputs, *params)


def _stacked(first: tuple, second: tuple) -> tuple:
    """Two (ids, mask) pairs of right-padded texts -> one (ids, mask) of all their rows, padded to
    the wider (padding id 0, mask 0)."""
    width = max(first[0].size(1), second[0].size(1))
    return tuple(torch.cat([F.pad(a, (0, width - a.size(1))), F.pad(b, (0, width - b.size(1)))])
                 for a, b in zip(first, second))


class GradCache(torch.autograd.Function):
    """features(*inputs) computed `chunk` rows at a time without a graph; the backward pass re-runs
    each chunk with gradients (with its first pass's random numbers and autocast) and returns the
    parameters' gradients against the cached ones."""

    @staticmethod
    def forward(ctx, features, chunk: int, n_inputs: int, *inputs_and_params):
        inputs, params = inputs_and_params[:n_inputs], inputs_and_params[n_inputs:]
        device = inputs[0].device.type
        ctx.features, ctx.n_inputs = features, n_inputs
        ctx.chunks = list(zip(*(x.split(chunk) for x in inputs)))  # [(input rows of one chunk, ...)]
        ctx.autocast = dict(device_type=device, enabled=torch.is_autocast_enabled(device),
                            dtype=torch.get_autocast_dtype(device))
        ctx.rng, outputs = [], []
        for part in ctx.chunks:
            ctx.rng.append(_rng_state())
            outputs.append(features(*part))
        ctx.save_for_backward(*params)
        return torch.cat(outputs)  # (B, D)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        params = ctx.saved_tensors
        totals = [torch.zeros_like(p) for p in params]
        start = 0
        for part, rng in zip(ctx.chunks, ctx.rng):
            rows = len(part[0])
            with _replayed(rng), torch.enable_grad(), torch.autocast(**ctx.autocast):
                out = ctx.features(*part)
            grads = torch.autograd.grad(out, params, grad[start:start + rows], allow_unused=True)
            for total, g in zip(totals, grads):
                if g is not None:
                    total += g
            start += rows
        return (None, None, None, *[None] * ctx.n_inputs, *totals)


def _rng_state() -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []


def _set_rng_state(state: tuple):
    torch.set_rng_state(state[0])
    if state[1]:
        torch.cuda.set_rng_state_all(state[1])


@contextlib.contextmanager
def _replayed(state: tuple):
    """The random numbers (dropout) of `state` inside, the current ones again after."""
    saved = _rng_state()
    _set_rng_state(state)
    try:
        yield
    finally:
        _set_rng_state(saved)


def clip_batch(config: ClipConfig, generator: torch.Generator, batch: int = 3, length: int = 7) -> dict:
    """Random pixel_values (B, C, S, S) and right-padded captions (B, T) each ending in eos."""
    pixels = torch.randn(batch, config.n_channels, config.image_size, config.image_size, generator=generator)
    first = 5  # ids below are the example tokenizer's specials
    ids = torch.randint(first, config.vocab_size, (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    ends = torch.tensor([length - 1, length - 3, length - 2][:batch] + [length - 1] * max(0, batch - 3))
    for row, end in enumerate(ends.tolist()):
        ids[row, end], ids[row, end + 1:], mask[row, end + 1:] = config.eos_token_id, 0, 0
    return {"pixel_values": pixels, "input_ids": ids, "attention_mask": mask}


PRESETS.update({
    "clip-tiny": ClipConfig(projection_dim=16, image_size=16, patch_size=4, vision_layers=2, vision_heads=2,
                            vision_width=32, vocab_size=64, max_text_len=16, text_layers=2, text_heads=2,
                            text_width=32, eos_token_id=3, text_pooling="eos"),
    "clip-vit-base-patch32": ClipConfig(),
    # MNIST digits (28 x 28, grey) and short captions from a WordPiece tokenizer ([SEP] = 3 ends a text)
    "clip-mnist": ClipConfig(projection_dim=64, image_size=28, patch_size=7, n_channels=1, vision_layers=4,
                             vision_heads=4, vision_width=96, vocab_size=256, max_text_len=32, text_layers=3,
                             text_heads=4, text_width=96, eos_token_id=3, text_pooling="eos"),
})
# LiT: clip-mnist's vision tower under the pretrained all-MiniLM-L6-v2 (loaded by the contrastive task), frozen
PRESETS["clip-mnist-lit"] = PRESETS["clip-mnist"].replace(
    text_encoder=PRESETS["minilm-l6"].to_dict(), text_pooling="mean", text_init="minilm", freeze="text")

register(FamilySpec(ClipConfig, Clip, kind=DUAL_ENCODER, block_class=TransformerBlock, tiny_preset="clip-tiny",
                    example_batch=clip_batch, processor=ClipProcessor))
