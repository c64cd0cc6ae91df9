"""Sentence embeddings from an encoder: mean of the token states over the attention mask,
L2-normalised (the sentence-transformers recipe that all-MiniLM-L6-v2 was trained with)."""

import torch
import torch.nn.functional as F

from ..layers import mean_pool
from ..progress import Progress


class SentenceEncoder:
    """Texts -> unit vectors (N, C), in batches of similar length (sorted, then put back)."""

    def __init__(self, model, tokenizer, max_length=256, batch_size=32):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_length = min(max_length, model.config.max_seq_len)
        self.batch_size = batch_size
        self.device = next(model.parameters()).device

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    @torch.inference_mode()
    def encode(self, texts, normalize=True, quiet=True) -> torch.Tensor:
        """-> (N, C); the texts done show on stderr (attnlab.progress) unless `quiet`."""
        texts = list(texts)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), self.dim)
        with Progress(len(texts), "text", "embedding", quiet) as bar:
            for start in range(0, len(texts), self.batch_size):
                rows = order[start:start + self.batch_size]
                batch = self.tokenizer.batch_encode([texts[i] for i in rows], max_length=self.max_length)
                batch = {k: v.to(self.device) for k, v in batch.items()}
                hidden = self.model.encode(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
                vectors = mean_pool(hidden, batch["attention_mask"]).float().cpu()
                out[rows] = F.normalize(vectors, dim=-1) if normalize else vectors
                bar.update(len(rows))
        return out
