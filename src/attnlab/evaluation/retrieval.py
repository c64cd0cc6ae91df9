"""Cross-modal retrieval and zero-shot classification with a dual encoder.

Recall@k over a set of image-caption pairs: for each image, whether its caption is among the k
nearest distinct captions (image -> text); for each caption, whether an image it describes is among
the k nearest images (text -> image). Equal captions count as one answer, so a set whose captions
come from templates ("a handwritten 7" many times) is scored fairly: k copies of one caption are not
k guesses.
"""

import torch

from ..errors import UserError


@torch.no_grad()
def embed_pairs(model, batches, split: str, chunk: int = 256) -> tuple:
    """-> (image embeddings (N, D), text embeddings (N, D)) of every pair of a PairBatches split."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    images, texts = [], []
    for start in range(0, len(batches.images[split]), chunk):
        inputs = batches.rows(split, torch.arange(start, min(start + chunk, len(batches.images[split]))))
        inputs = {k: v.to(device) for k, v in inputs.items()}
        images.append(model.encode_image(inputs["pixel_values"]).float().cpu())
        texts.append(model.encode_text(inputs["input_ids"], inputs["attention_mask"]).float().cpu())
    model.train(was_training)
    return torch.cat(images), torch.cat(texts)


def recall_at(image: torch.Tensor, text: torch.Tensor, ks=(1, 5), captions: list | None = None) -> dict:
    """image, text: unit embeddings (N, D) of N pairs, row i of each the same pair; captions: the N
    texts, so that equal captions count as right answers (None: only the pair's own)."""
    similarity = image @ text.T  # (N images, N texts)
    n = len(image)
    if captions is None:
        relevant, distinct = torch.eye(n, dtype=torch.bool), torch.arange(n)
    else:
        first = {}  # caption -> the first row holding it
        for row, caption in enumerate(captions):
            first.setdefault(caption, row)
        caption_ids = torch.tensor([first[c] for c in captions])
        relevant = caption_ids[:, None] == caption_ids[None, :]  # (N, N), symmetric
        distinct = torch.tensor(list(first.values()))  # (M,) one text per distinct caption
    scores = {}
    for k in ks:
        nearest = similarity[:, distinct].topk(min(k, len(distinct)), dim=1).indices  # (N, k) among distinct
        image_hits = relevant[:, distinct].gather(1, nearest).any(1)
        text_hits = relevant.T.gather(1, similarity.T.topk(min(k, n), dim=1).indices).any(1)
        scores[f"image_to_text_recall@{k}"] = float(image_hits.float().mean())
        scores[f"text_to_image_recall@{k}"] = float(text_hits.float().mean())
    return scores


def pair_scores(model, processor, pairs, batch_size: int = 256) -> dict:
    """Recall@1 and @5 of image -> text and text -> image over image-caption `pairs` (data/pairs.py)."""
    image = embed_images(model, processor, pairs.items, batch_size)
    text = embed_texts(model, processor, pairs.texts, batch_size)
    return {"pairs": len(pairs), **recall_at(image, text, (1, 5), pairs.texts)}


@torch.no_grad()
def class_embeddings(model, processor, labels: list, templates: list) -> torch.Tensor:
    """Zero-shot class embeddings (C, D): each label's prompts (one per template, the label in place of `{}`)
    embedded, averaged and made unit length again."""
    prompts = [template.replace("{}", label) for label in labels for template in templates]
    embeddings = embed_texts(model, processor, prompts)  # (C * templates, D)
    return torch.nn.functional.normalize(embeddings.view(len(labels), len(templates), -1).mean(1), dim=-1)


@torch.no_grad()
def zero_shot_probabilities(model, processor, items: list, labels: list, templates: list) -> torch.Tensor:
    """(N, C) class probabilities of raw images: the softmax of the model's scaled cosine
    similarities to each class's prompt embedding."""
    for template in templates:
        if template.count("{}") != 1:
            raise UserError(f"template {template!r} must hold {{}} exactly once, where the class name goes")
    classes = class_embeddings(model, processor, labels, templates)  # (C, D)
    logits = model.scale().detach().float().cpu() * embed_images(model, processor, items) @ classes.T
    return logits.softmax(-1)


@torch.no_grad()
def embed_images(model, processor, items: list, chunk: int = 256) -> torch.Tensor:
    """Raw images -> unit embeddings (N, D)."""
    device = next(model.parameters()).device
    return torch.cat([model.encode_image(processor(items[s:s + chunk])["pixel_values"].to(device)).float().cpu()
                      for s in range(0, len(items), chunk)])


@torch.no_grad()
def embed_texts(model, processor, texts: list, chunk: int = 256) -> torch.Tensor:
    """Texts -> unit embeddings (N, D)."""
    device = next(model.parameters()).device
    parts = []
    for start in range(0, len(texts), chunk):
        inputs = processor.texts(texts[start:start + chunk], model.config.max_seq_len)
        parts.append(model.encode_text(inputs["input_ids"].to(device), inputs["attention_mask"].to(device)).float().cpu())
    return torch.cat(parts)
