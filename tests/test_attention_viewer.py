"""The attention viewer: the weights it shows are Hugging Face's eager attentions, masked keys get none, the
page holds everything it needs, and a real headless Chromium renders it and answers clicks."""

import base64
import io
import json
import re
import zlib

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from attnlab.checkpoint import load_checkpoint, save_checkpoint
from attnlab.cli import main
from attnlab.errors import UserError
from attnlab.interop import import_hf, load_minilm
from attnlab.models import build_model, preset
from attnlab.models.base import FAMILIES
from attnlab.inference.attention_maps import attention_maps
from attnlab.inference.attention_view import view_attention
from attnlab.processors.clip import ClipProcessor
from attnlab.processors.media import npy_bytes
from attnlab.serving.app import create_app
from attnlab.tokenizers import SubwordTokenizer

from .chromium import Chromium, find_chromium

transformers = pytest.importorskip("transformers")
TOL = 1e-6


def randomised(model):
    """HF zero-inits biases and unit-inits norms: randomise them so that parity means something."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "bias" in name or "LayerNorm" in name or name.split(".")[-2].startswith("ln_"):
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def padded(batch=3, length=9, vocab=64):
    torch.manual_seed(1)
    ids = torch.randint(3, vocab, (batch, length))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return ids.masked_fill(mask == 0, 0), mask


def assert_same_attentions(ours, reference, input_ids, attention_mask):
    """Every real query's row (a padding query's depends on the position a model gives padding: GPT-2 counts
    on, attnlab repeats the last)."""
    with torch.no_grad():
        theirs = reference(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True).attentions
    mine = [m.weights for m in attention_maps(ours, {"input_ids": input_ids, "attention_mask": attention_mask})]
    assert len(mine) == len(theirs)
    real = attention_mask.bool()[:, None, :, None]  # (B, 1, Tq, 1)
    for layer, (a, b) in enumerate(zip(mine, theirs)):
        assert a.shape == b.shape
        assert ((a - b).abs() * real).max().item() <= TOL, f"layer {layer}"


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_the_weights_are_hugging_face_eager_attentions(family, tmp_path):
    torch.manual_seed(0)
    if family == "bert":
        config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=48, max_position_embeddings=40)
        reference = transformers.BertModel(config, add_pooling_layer=False)
    else:
        config = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=40)
        reference = transformers.GPT2LMHeadModel(config)
    reference = randomised(reference)
    reference.save_pretrained(tmp_path / "hf")
    reference = type(reference).from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    ours, _ = import_hf(tmp_path / "hf")
    ids, mask = padded()
    assert_same_attentions(ours, reference, input_ids=ids, attention_mask=mask)


def test_rows_sum_to_one_and_masked_keys_get_nothing():
    ids, mask = padded()
    torch.manual_seed(0)
    bert = build_model(preset("bert-mlm-tiny"))
    for m in attention_maps(bert, {"input_ids": ids, "attention_mask": mask}):
        assert torch.allclose(m.weights.sum(-1), torch.ones(()), atol=TOL)
        assert (m.weights * ~mask.bool()[:, None, None, :] == 0).all()
    gpt = build_model(preset("gpt-tiny"))
    for m in attention_maps(gpt, {"input_ids": ids[:1]}):
        assert torch.allclose(m.weights.sum(-1), torch.ones(()), atol=TOL)
        assert (m.weights.triu(1) == 0).all()  # no query sees a later key


def test_a_tokenizer_file_that_pads_to_a_fixed_length_shows_no_padding():
    model, tokenizer = load_minilm()  # its tokenizer.json pads every text to 128 tokens
    view = view_attention(model, tokenizer, text="Hello world")
    assert view.tokens == {"encoder": ["[CLS]", "hello", "world", "[SEP]"]}


def test_seq2seq_shows_encoder_decoder_and_cross_attention_of_its_tokens():
    spec = FAMILIES["transformer"]
    torch.manual_seed(0)
    model = build_model(preset(spec.tiny_preset))
    view = view_attention(model, spec.processor.example(model.config), source="abc", target="de")
    assert view.tokens == {"encoder": ["a", "b", "c", "</s>"], "decoder": ["<s>", "d", "e"]}
    shapes = {name: tuple(w.shape[-2:]) for name, w in view.stacks().items()}
    assert shapes == {"encoder": (4, 4), "decoder": (3, 3), "cross": (3, 4)}


def test_attention_over_parts_of_the_input_is_refused_in_one_line():
    spec = FAMILIES["vivit"]
    model = build_model(preset("vivit-divided-tiny"))
    processor = spec.processor.example(model.config)
    item = processor.example_items(1, np.random.default_rng(0))[0]
    with pytest.raises(UserError, match="attends over parts of the input at a time"):
        view_attention(model, processor, media=item)


@pytest.fixture(scope="module")
def bert_checkpoint(tmp_path_factory):
    """A tiny BERT with a WordPiece tokenizer, so that sentence pairs get their token types."""
    tokenizer = SubwordTokenizer.train_wordpiece("the cat sat on the mat . it was warm there and the dog slept " * 20,
                                                 vocab_size=120)
    torch.manual_seed(0)
    model = build_model(preset("bert-mlm-tiny", vocab_size=tokenizer.vocab_size, n_head=4))
    path = tmp_path_factory.mktemp("bert") / "ckpt"
    save_checkpoint(path, model, tokenizer)
    return path


@pytest.fixture(scope="module")
def pair_page(bert_checkpoint, tmp_path_factory):
    page = tmp_path_factory.mktemp("page") / "pair.html"
    assert main(["attention", str(bert_checkpoint), "--text", "the cat sat on the mat .", "--text-pair",
                 "it was warm there .", "--out", str(page), "--png", str(page.parent / "png")]) == 0
    return page


def embedded(page_text: str) -> dict:
    return json.loads(re.search(r'<script id="attention-data" type="application/json">(.*?)</script>', page_text,
                                re.S).group(1))


def test_the_page_is_self_contained_and_holds_the_weights_to_one_255th(pair_page, bert_checkpoint):
    text = pair_page.read_text()
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=|https?://|@import", text)
    data = embedded(text)
    tokens, segments = data["tokens"]["encoder"], data["segments"]["encoder"]
    assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2 and set(segments) == {0, 1}
    assert segments.index(1) == tokens.index("[SEP]") + 1  # B starts after the first [SEP]
    (stack,) = data["stacks"]
    steps = torch.frombuffer(bytearray(zlib.decompress(base64.b64decode(stack["data"]))), dtype=torch.uint8)
    model, tokenizer = load_checkpoint(bert_checkpoint)
    view = view_attention(model, tokenizer, text="the cat sat on the mat .", text_pair="it was warm there .")
    weights = view.stacks()["encoder"]
    assert (steps.float().reshape(weights.shape) / 255 - weights).abs().max() <= 0.5 / 255 + 1e-7
    assert sorted(p.name for p in (pair_page.parent / "png").iterdir()) == ["encoder-layer0.png", "encoder-layer1.png"]


def test_the_verb_refuses_what_it_cannot_show_in_one_line(bert_checkpoint, tmp_path, capsys):
    out = str(tmp_path / "a.html")
    cases = [(["--source", "x"], "the text to look at"), (["--text", "a", "--out", str(tmp_path / "a.txt")], ".html")]
    for extra, words in cases:
        assert main(["attention", str(bert_checkpoint), *extra] + (["--out", out] if "--out" not in extra else [])) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and words in err
    mamba = tmp_path / "mamba"
    save_checkpoint(mamba, build_model(preset("mamba-tiny")))
    assert main(["attention", str(mamba), "--text", "abc", "--out", out]) == 2
    assert "recurrence" in capsys.readouterr().err and not (tmp_path / "a.html").exists()


def test_the_server_shows_the_page_and_refuses_bad_input_with_a_400(bert_checkpoint):
    model, tokenizer = load_checkpoint(bert_checkpoint)
    with TestClient(create_app(model, tokenizer)) as client:
        assert "<form" in client.get("/attention").text
        page = client.get("/attention", params={"text": "the cat", "text_pair": "the dog"})
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert set(embedded(page.text)["segments"]["encoder"]) == {0, 1}
        refused = client.get("/attention", params={"source": "the cat"})
        assert refused.status_code == 400 and "text" in refused.json()["error"]["message"]
    with TestClient(create_app(build_model(preset("mamba-tiny")), None)) as client:
        assert client.get("/attention").status_code == 400


def test_the_server_shows_either_tower_of_a_dual_encoder():
    clip = build_model(preset("clip-tiny")).eval()
    processor = ClipProcessor.example(clip.config)
    image = base64.b64encode(npy_bytes(processor.example_items(1, np.random.default_rng(0))[0])).decode()
    with TestClient(create_app(clip, processor)) as client:
        for reply in (client.get("/attention", params={"text": "the cat"}),
                      client.post("/attention", json={"input": image})):
            assert reply.status_code == 200 and len(embedded(reply.text)["stacks"]) == 1


# -- in a real browser ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    binary = find_chromium()
    if binary is None:
        pytest.skip("no chromium on PATH (scripts/env.sh test installs it)")
    try:
        chromium = Chromium(binary)
    except (OSError, RuntimeError) as err:
        pytest.skip(f"chromium cannot run here: {err}")
    yield chromium
    chromium.close()


def lines_image(browser) -> str:
    return browser.evaluate("document.getElementById('lines').toDataURL()")


def test_chromium_renders_a_page_that_is_not_blank(browser, pair_page):
    from PIL import Image

    browser.open(pair_page.as_uri())
    shot = Image.open(io.BytesIO(browser.screenshot())).convert("RGB")
    colours = shot.getcolors(maxcolors=1 << 20)
    white = sum(count for count, rgb in colours if min(rgb) > 245)
    assert len(colours) > 50 and white < 0.95 * shot.width * shot.height
    assert browser.evaluate("document.querySelectorAll('#grid canvas').length") == 2 * 4  # layers x heads


def test_clicking_a_head_or_a_map_changes_the_view(browser, pair_page):
    browser.open(pair_page.as_uri())
    before, drawn = browser.evaluate("document.body.dataset.view"), lines_image(browser)
    browser.click('#heads button[data-head="2"]')
    assert browser.evaluate("document.body.dataset.view") == before.replace("heads=0", "heads=0,2")
    assert lines_image(browser) != drawn
    browser.click('#grid canvas[data-layer="1"][data-head="3"]')
    assert browser.evaluate("document.body.dataset.view").startswith("stack=encoder&layer=1&heads=3&")
    assert browser.evaluate("document.querySelector('#grid canvas.on').dataset.head") == "3"


def test_the_url_fragment_selects_layer_heads_and_sentence_filter(browser, pair_page):
    browser.open(pair_page.as_uri() + "#layer=1&heads=1,3&filter=AB")
    assert browser.evaluate("document.body.dataset.view") == "stack=encoder&layer=1&heads=1,3&filter=AB"
    filtered = lines_image(browser)
    browser.open(pair_page.as_uri() + "#layer=1&heads=1,3&filter=all")
    assert lines_image(browser) != filtered
