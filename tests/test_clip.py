"""CLIP: parity with Hugging Face CLIPModel from tiny random configs (both text pooling rules), the
logit-scale clamp, the batch-of-one error, unit embeddings, GradCache's gradient, freezing a tower."""

import json
import math

import numpy as np
import pytest
import torch

from attnlab.cli import main
from attnlab.errors import UserError
from attnlab.interop import export_hf, import_hf
from attnlab.interop.hf import load_hf_state
from attnlab.interop.clip import config_from_hf
from attnlab.models import build_model, preset
from attnlab.models.clip import clip_batch

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()


def hf_clip(eos_token_id: int):
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, eos_token_id=eos_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                           image_size=16, patch_size=4),
        projection_dim=16)
    return transformers.CLIPModel(config).eval()


def ours_from(hf_model):
    hf = hf_model.config.to_dict()
    config = config_from_hf(hf, "none", hf_model.state_dict().keys())
    return load_hf_state(build_model(config), "clip", hf_model.state_dict()).eval()


def text_batch(eos_token_id: int):
    """Three right-padded captions (3, 8) ending in eos, and their attention mask. Under the legacy
    rule (eos 2) both models pool at each row's largest id, wherever eos is."""
    ends = torch.tensor([5, 2, 7])
    ids = torch.tensor([[0, 5, 9, 13, 7, 0, 1, 1], [0, 8, 0, 1, 1, 1, 1, 1], [0, 11, 4, 6, 10, 12, 9, 0]])
    ids[torch.arange(3), ends] = eos_token_id
    return ids, (torch.arange(8)[None] <= ends[:, None]).long()


@pytest.mark.parametrize("eos_token_id", [2, 40], ids=["argmax", "first-eos"])
def test_logits_embeddings_and_loss_match_hugging_face(eos_token_id):
    hf = hf_clip(eos_token_id)
    ours = ours_from(hf)
    assert ours.config.text_pooling == ("argmax" if eos_token_id == 2 else "eos")
    pixels = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    ids, mask = text_batch(eos_token_id)
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True)
        mine = ours(pixel_values=pixels, input_ids=ids, attention_mask=mask)
        image, text = ours.encode_image(pixels), ours.encode_text(ids, mask)
    close = dict(rtol=0, atol=1e-5)
    torch.testing.assert_close(mine.logits, theirs.logits_per_image, **close)
    torch.testing.assert_close(mine.logits.T, theirs.logits_per_text, **close)
    torch.testing.assert_close(image, theirs.image_embeds, **close)
    torch.testing.assert_close(text, theirs.text_embeds, **close)
    torch.testing.assert_close(mine.loss, theirs.loss, **close)


def test_pooling_rules_differ_where_the_largest_id_is_not_the_end():
    """The legacy rule pools at the largest id; the other at the first end token: a text with a
    larger id before its end tells them apart."""
    model = build_model(preset("clip-tiny")).eval()
    ids = torch.tensor([[1, 60, 7, 3, 0]])  # eos (3) at 3, the largest id at 1
    assert model.text.end_of_text(ids).item() == 3
    model.text.pooling = "argmax"
    assert model.text.end_of_text(ids).item() == 1


def test_export_then_hugging_face_loads_the_same_model(tmp_path):
    hf = hf_clip(40)
    ours = ours_from(hf)
    export_hf(ours, tmp_path / "hf")
    back = transformers.CLIPModel.from_pretrained(tmp_path / "hf").eval()
    pixels = torch.randn(2, 3, 16, 16)
    ids, mask = text_batch(40)
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=ids[:2], attention_mask=mask[:2], pixel_values=pixels).logits_per_image,
                                   ours(pixel_values=pixels, input_ids=ids[:2], attention_mask=mask[:2]).logits,
                                   rtol=0, atol=1e-5)
    reimported, _ = import_hf(tmp_path / "hf")
    assert reimported.config == ours.config


def test_export_refuses_a_pooling_rule_hugging_face_would_not_follow(tmp_path):
    model = build_model(preset("clip-tiny", text_pooling="argmax"))  # eos_token_id 3: HF would pool at eos
    with pytest.raises(UserError, match="argmax") as err:
        export_hf(model, tmp_path / "hf")
    assert "\n" not in str(err.value) and not (tmp_path / "hf").exists()


def test_logit_scale_starts_at_one_over_007_and_is_clamped_at_100():
    model = build_model(preset("clip-tiny")).eval()
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    batch = clip_batch(model.config, torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1000.0))
        logits = model(**batch).logits
        cosine = model.encode_image(batch["pixel_values"]) @ model.encode_text(batch["input_ids"]).T
    torch.testing.assert_close(logits, 100.0 * cosine)


def test_a_batch_of_one_is_refused_in_one_line():
    model = build_model(preset("clip-tiny"))
    batch = {k: v[:1] for k, v in clip_batch(model.config, torch.Generator().manual_seed(0)).items()}
    with pytest.raises(UserError, match="at least 2") as err:
        model(**batch)
    assert "\n" not in str(err.value)


def test_embeddings_are_unit_length():
    model = build_model(preset("clip-tiny")).eval()
    batch = clip_batch(model.config, torch.Generator().manual_seed(0), batch=5)
    with torch.no_grad():
        for embeddings in (model.encode_image(batch["pixel_values"]), model.encode_text(batch["input_ids"])):
            torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(5))


def test_hard_negatives_join_the_image_to_text_ranking_only_where_a_row_has_one():
    """The loss by hand: image -> text over the B captions and the hard negatives of rows that have
    one; text -> image over the B images as without negatives; equal to the plain loss when no row has one."""
    model = build_model(preset("clip-tiny")).eval()
    generator = torch.Generator().manual_seed(0)
    batch = clip_batch(model.config, generator, batch=4)
    other = clip_batch(model.config, generator, batch=4)
    negatives = {"negative_ids": other["input_ids"], "negative_mask": other["attention_mask"]}
    present = torch.tensor([True, False, True, True])
    with torch.no_grad():
        out = model(**batch, **negatives, has_negative=present)
        image = model.encode_image(batch["pixel_values"])
        texts = torch.cat([model.encode_text(batch["input_ids"]), model.encode_text(other["input_ids"])])
        scores = model.scale() * image @ texts.T  # (4, 8)
        targets = torch.arange(4)
        to_text = torch.nn.functional.cross_entropy(scores[:, [0, 1, 2, 3, 4, 6, 7]], targets)
        expected = (to_text + torch.nn.functional.cross_entropy(scores[:, :4].T, targets)) / 2
        torch.testing.assert_close(out.loss, expected)
        assert out.logits.shape == (4, 8) and torch.isinf(out.logits[:, 5]).all()
        none = model(**batch, **negatives, has_negative=torch.zeros(4, dtype=torch.bool)).loss
        torch.testing.assert_close(none, model(**batch).loss)


def gradients(model, batch) -> dict:
    model.zero_grad()
    model(**batch).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_grad_cache_gives_the_gradient_of_the_whole_batch():
    torch.manual_seed(0)
    model = build_model(preset("clip-tiny")).double().train()
    batch = clip_batch(model.config, torch.Generator().manual_seed(0), batch=7)
    batch["pixel_values"] = batch["pixel_values"].double()
    whole = gradients(model, batch)
    model.config.embed_chunk = 3  # chunks of 3, 3 and 1 rows
    chunked = gradients(model, batch)
    assert whole.keys() == chunked.keys() == {n for n, _ in model.named_parameters()}
    for name in whole:
        torch.testing.assert_close(chunked[name], whole[name], rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("tower", ["vision", "text"])
def test_a_frozen_tower_gets_no_gradient_and_stays_in_eval_mode(tower):
    model = build_model(preset("clip-tiny", freeze=tower, dropout=0.1)).train()
    frozen = dict(model.towers())[tower]
    model(**clip_batch(model.config, torch.Generator().manual_seed(0))).loss.backward()
    assert all(p.grad is None and not p.requires_grad for module in frozen for p in module.parameters())
    assert all(not m.training for module in frozen for m in module.modules())
    other = "text" if tower == "vision" else "vision"
    assert all(p.grad is not None for module in model.towers()[other] for p in module.parameters())


def write_pairs(directory, count: int = 24):
    """A pairs folder of random 16 x 16 grey .npy images, captions naming one of three shapes."""
    rng = np.random.default_rng(0)
    (directory / "img").mkdir(parents=True)
    lines = []
    for i in range(count):
        np.save(directory / "img" / f"{i}.npy", rng.integers(0, 256, (16, 16), dtype=np.uint8))
        lines.append(json.dumps({"image": f"img/{i}.npy", "text": f"a {['cat', 'dog', 'owl'][i % 3]} number {i}"}))
    (directory / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return directory


def test_contrastive_training_refuses_grad_accum_and_names_embed_chunk(tmp_path, capsys):
    data = write_pairs(tmp_path / "pairs")
    code = main(["train", "task=contrastive", "--preset", "clip-tiny", "--data", str(data), "--out",
                 str(tmp_path / "run"), "train.grad_accum=2", "train.device=cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "embed_chunk" in err and len(err.strip().splitlines()) == 1


def test_a_bad_pairs_line_is_one_line_naming_it(tmp_path, capsys):
    data = write_pairs(tmp_path / "pairs")
    with open(data / "pairs.jsonl", "a") as f:
        f.write(json.dumps({"image": "img/missing.npy", "text": "a cat"}) + "\n")
    code = main(["train", "task=contrastive", "--preset", "clip-tiny", "--data", str(data), "--out",
                 str(tmp_path / "run"), "train.device=cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "missing.npy" in err and len(err.strip().splitlines()) == 1


def test_pairs_with_hard_negatives_reach_the_model_and_a_bad_one_is_one_line(tmp_path, capsys):
    from attnlab.data.pairs import PairBatches, read_pairs
    from attnlab.processors.clip import ClipProcessor
    from attnlab.processors.image import ImageProcessor
    from attnlab.tokenizers import train_tokenizer

    data = write_pairs(tmp_path / "pairs", count=6)
    lines = [json.loads(line) for line in (data / "pairs.jsonl").read_text().splitlines()]
    for line in lines[::2]:
        line["hard_negative"] = f"not {line['text']}"
    (data / "pairs.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    image = ImageProcessor(image_size=16, channels=1)
    pairs = read_pairs(data, image)
    tokenizer = train_tokenizer("wordpiece", "\n".join(pairs.texts + ["not"]), 64)
    batches = PairBatches({"train": pairs}, ClipProcessor(image.fit(pairs.items), tokenizer), 6, 16)
    inputs = batches.rows("train", torch.arange(6))
    assert inputs["has_negative"].tolist() == [True, False] * 3
    assert tokenizer.decode(inputs["negative_ids"][2].tolist()) == "[CLS] not a owl number 2 [SEP]"
    lines[1]["hard_negative"] = 7
    (data / "pairs.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    code = main(["train", "task=contrastive", "--preset", "clip-tiny", "--data", str(data), "--out",
                 str(tmp_path / "run"), "train.device=cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "line 2" in err and "hard_negative" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow  # loads the 90 MB MiniLM and saves it twice: tens of seconds on a busy 2-core machine
def test_lit_starts_from_the_pretrained_minilm_and_keeps_it_frozen(tmp_path, capsys):
    """clip-mnist-lit: the text tower is all-MiniLM-L6-v2 (its mean-pooled sentence vectors, before
    the projection), with MiniLM's tokenizer, and training leaves it as it was."""
    from attnlab.checkpoint import load_checkpoint
    from attnlab.inference.embeddings import SentenceEncoder
    from attnlab.interop import load_minilm

    data = write_pairs(tmp_path / "pairs")
    assert main(["train", "task=contrastive", "--preset", "clip-mnist-lit", "--data", str(data), "--out",
                 str(tmp_path / "run"), "train.max_steps=2", "train.eval_interval=2", "train.eval_batches=1",
                 "train.batch_size=4", "train.lr=0.01", "train.warmup_steps=0", "train.progress=false",
                 "train.device=cpu"]) == 0
    model, processor = load_checkpoint(tmp_path / "run" / "last")
    minilm, tokenizer = load_minilm()
    sentences = ["a cat number 3", "the number seven"]
    inputs = processor.texts(sentences, model.config.max_seq_len)
    with torch.no_grad():
        ours = torch.nn.functional.normalize(model.text(inputs["input_ids"], inputs["attention_mask"]), dim=-1)
    theirs = SentenceEncoder(minilm, tokenizer).encode(sentences)
    assert (ours - theirs).abs().max().item() <= 1e-5
    assert model.config.freeze == "text" and not any(p.requires_grad for p in model.text.parameters())


@pytest.mark.parametrize("args,problem", [
    (["--labels", "cat,dog", "--template", "a photo"], "exactly once"),
    (["--labels", "cat,cat"], "distinct"),
    (["--labels", "cat,,dog"], "distinct"),
    ([], "--labels"),
], ids=["template-without-braces", "repeated-label", "empty-label", "no-labels"])
def test_zero_shot_classify_refuses_bad_labels_and_templates_in_one_line(args, problem, tmp_path, capsys):
    from attnlab.checkpoint import save_checkpoint
    from attnlab.models.base import family_spec

    model = build_model(preset("clip-tiny"))
    save_checkpoint(tmp_path / "ckpt", model, family_spec(model).processor.example(model.config))
    data = write_pairs(tmp_path / "pairs", count=2)
    code = main(["classify", str(tmp_path / "ckpt"), str(data / "img" / "0.npy"), *args])
    err = capsys.readouterr().err
    assert code == 2 and problem in err and len(err.strip().splitlines()) == 1, err


def test_recall_counts_repeated_captions_as_one_answer():
    """Image -> text ranks distinct captions: three copies of a wrong caption are one wrong guess."""
    from attnlab.evaluation.retrieval import recall_at

    captions = ["one", "two", "two", "two", "three"]
    text = torch.eye(3)[[0, 1, 1, 1, 2]]  # equal captions, equal embeddings
    image = text.clone()
    image[0] = torch.nn.functional.normalize(torch.tensor([0.1, 1.0, 0.5]), dim=-1)  # "two", "three", then "one"
    scores = recall_at(image, text, (1, 2, 3), captions)
    # image 0's caption is 3rd of the distinct captions (5th of the raw texts); the others are 1st
    assert [scores[f"image_to_text_recall@{k}"] for k in (1, 2, 3)] == pytest.approx([0.8, 0.8, 1.0])
