"""The family contract, run over the registry itself: registering a family (models/base.py
`register(FamilySpec(...))`) enrols it in every test here, with no list kept by hand. Each family's
tiny preset is built, trained, saved, converted, decoded, compressed and served through the same
code a user's command runs."""

import base64
import copy
import dataclasses
import json
import math
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient

from attnlab.checkpoint import load_checkpoint, save_checkpoint
from attnlab.cli import build_parser, main
from attnlab.commands.serve import server_app
from attnlab.compression import inject_lora, prune_magnitude, prune_structured, quantize_model
from attnlab.compression.lora import lora_modules
from attnlab.compression.targets import ALL_TARGETS, find_linears
from attnlab.data.batch import Batch
from attnlab.errors import UserError
from attnlab.inference import BeamSearch, Sampling, causal_beam_search, generate
from attnlab.interop import export_hf, import_hf
from attnlab.interop.registry import hf_spec_for
from attnlab.models.base import (CAUSAL_LM, CLASSIFIER, DUAL_ENCODER, ENCODER, FAMILIES, GRAPH, KINDS, SEQ2SEQ,
                                 build_model, preset)
from attnlab.processors.media import npy_bytes
from attnlab.serving.app import ENDPOINTS, ServeConfig, create_app
from attnlab.training import TrainConfig, Trainer

SPECS = [FAMILIES[name] for name in sorted(FAMILIES)]
NAMES = [spec.name for spec in SPECS]
of_kind = {kind: [s for s in SPECS if s.kind == kind] for kind in KINDS}


def every(specs):
    return pytest.mark.parametrize("spec", specs, ids=[s.name for s in specs])


def tiny_model(spec, **overrides):
    torch.manual_seed(0)
    return build_model(preset(spec.tiny_preset, **overrides))


def example(spec, model) -> dict:
    return spec.example_batch(model.config, torch.Generator().manual_seed(0))


def test_every_kind_has_a_family():
    assert all(of_kind.values()), {kind: [s.name for s in specs] for kind, specs in of_kind.items()}


@every(SPECS)
def test_forward_backward_reaches_every_parameter(spec):
    model = tiny_model(spec)
    loss = model(**example(spec, model)).loss
    assert torch.isfinite(loss)
    loss.backward()
    unreached = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unreached


class FixedBatches:
    """The same batch for every split and step: training must lower its loss."""

    def __init__(self, inputs):
        rows = len(next(iter(inputs.values())))
        self.batch = Batch(inputs, torch.ones(rows, dtype=torch.long))

    def sample(self, split, generator):
        return self.batch


@every(SPECS)
def test_trainer_lowers_the_loss_on_a_fixed_batch(spec, tmp_path):
    model = tiny_model(spec, dropout=0.0)
    batch = example(spec, model)
    model.eval()
    with torch.no_grad():
        before = model(**batch).loss.item()
    config = TrainConfig(max_steps=6, lr=3e-3, warmup_steps=0, eval_interval=6, eval_batches=1, progress=False,
                         device="cpu")
    Trainer(model, config, FixedBatches(batch), tmp_path / "run").train()
    model.eval()
    with torch.no_grad():
        after = model(**batch).loss.item()
    assert after < before - 0.05


@every(SPECS)
def test_save_and_load_give_identical_outputs(spec, tmp_path):
    model = tiny_model(spec).eval()
    processor = spec.processor.example(model.config)
    batch = example(spec, model)
    save_checkpoint(tmp_path / "ckpt", model, processor)
    loaded, loaded_processor = load_checkpoint(tmp_path / "ckpt")
    assert type(loaded) is type(model) and loaded.config == model.config
    assert type(loaded_processor) is type(processor)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, rtol=0, atol=0)


# -- serving: every family starts, answers what its kind serves and refuses the rest -------------

REQUESTS = {"/v1/completions": {"prompt": "the cat", "max_tokens": 5, "temperature": 0},
            "/v1/embeddings": {"input": ["the cat", "a dog sat"]},
            "/v1/classify": {"input": "the cat"}}


def requests_for(spec, model) -> dict:
    """REQUESTS, with a graph network's /v1/classify body a graph (its example batch's)."""
    if spec.kind != GRAPH:
        return REQUESTS
    batch = example(spec, model)
    return {**REQUESTS, "/v1/classify": {"x": batch["x"].tolist(), "edge_index": batch["edge_index"].tolist()}}


def client_for(spec, **settings):
    model = tiny_model(spec).eval()
    app = create_app(model, spec.processor.example(model.config), ServeConfig(max_batch=4, timeout_s=30, **settings))
    return TestClient(app)


def media_files(spec, count: int) -> list:
    """The .npy bytes of `count` random raw items a classifier's (or a dual encoder's) tiny model reads
    (every modality reads .npy)."""
    processor = spec.processor.example(preset(spec.tiny_preset))
    return [npy_bytes(item) for item in processor.example_items(count, np.random.default_rng(0))]


@every(SPECS)
def test_the_server_answers_what_the_kind_serves_and_refuses_the_rest(spec):
    with client_for(spec) as client:
        health = client.get("/health").json()
        assert health["kind"] == spec.kind and health["family"] == spec.name
        for path, body in requests_for(spec, tiny_model(spec)).items():
            reply = client.post(path, json=body)
            if path not in ENDPOINTS[spec.kind]:
                message = reply.json()["error"]["message"]
                assert reply.status_code == 400 and "is not served here" in message and "\n" not in message
            elif path == "/v1/completions":
                assert reply.status_code == 200, reply.text
                choice = reply.json()["choices"][0]
                assert choice["finish_reason"] in ("stop", "length") and isinstance(choice["text"], str)
            elif path == "/v1/classify" and spec.kind == CLASSIFIER:  # it reads files, not text: below
                assert reply.status_code == 400 and "\n" not in reply.json()["error"]["message"]
            elif path == "/v1/classify" and spec.kind == GRAPH:  # a label for every node of the posted graph
                assert reply.status_code == 200, reply.text
                assert len(reply.json()["data"]) == len(body["x"])
            elif path == "/v1/classify":  # the tiny encoders carry a masked-LM head, not a classifier
                message = reply.json()["error"]["message"]
                assert reply.status_code == 400 and "not a sequence classifier" in message and "\n" not in message
            elif path == "/v1/embeddings":
                assert reply.status_code == 200, reply.text
                vectors = torch.tensor([row["embedding"] for row in reply.json()["data"]])
                assert vectors.shape == (2, embedding_width(spec))
                torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(2))


def embedding_width(spec) -> int:
    """The width of the vectors /v1/embeddings returns: a dual encoder's shared space, else the hidden size."""
    config = preset(spec.tiny_preset)
    return config.projection_dim if spec.kind == DUAL_ENCODER else config.d_model


@every(of_kind[DUAL_ENCODER])
def test_a_dual_encoder_embeds_base64_images_into_its_text_space_and_refuses_bad_ones_with_a_4xx(spec):
    files = media_files(spec, 3)
    with client_for(spec, max_input_bytes=max(map(len, files))) as client:
        body = {"input": [base64.b64encode(f).decode() for f in files], "modality": "image"}
        reply = client.post("/v1/embeddings", json=body)
        assert reply.status_code == 200, reply.text
        images = torch.tensor([row["embedding"] for row in reply.json()["data"]])
        texts = torch.tensor([row["embedding"] for row in
                              client.post("/v1/embeddings", json={"input": ["the cat"]}).json()["data"]])
        assert images.shape == (3, embedding_width(spec)) and texts.shape == (1, embedding_width(spec))
        torch.testing.assert_close(images.norm(dim=-1), torch.ones(3))
        bad = {"not base64": "%%%", "not an image": base64.b64encode(b"hello, not a file").decode(),
               "over the byte limit": base64.b64encode(files[0] + b"\0" * 8).decode()}
        for problem, item in bad.items():
            reply = client.post("/v1/embeddings", json={"input": [body["input"][0], item], "modality": "image"})
            message = reply.json()["error"]["message"]
            expected = 413 if problem == "over the byte limit" else 400
            assert reply.status_code == expected and "input 1" in message and "\n" not in message, (problem, message)
        reply = client.post("/v1/embeddings", json={"input": "the cat", "modality": "sound"})
        assert reply.status_code == 422


@every(of_kind[CLASSIFIER])
def test_a_classifier_serves_base64_files_and_refuses_bad_ones_with_a_4xx(spec):
    files = media_files(spec, 3)
    with client_for(spec, max_input_bytes=max(map(len, files))) as client:
        reply = client.post("/v1/classify", json={"input": [base64.b64encode(f).decode() for f in files]})
        assert reply.status_code == 200, reply.text
        data = reply.json()["data"]
        n_labels = preset(spec.tiny_preset).n_labels
        assert len(data) == 3 and all(len(row["scores"]) == n_labels for row in data)
        assert all(row["score"] == max(row["scores"].values()) == row["scores"][row["label"]] for row in data)
        bad = {"not base64": "%%%", "not a file of the modality": base64.b64encode(b"hello, not a file").decode(),
               "over the byte limit": base64.b64encode(files[0] + b"\0" * 8).decode()}
        for problem, body in bad.items():
            reply = client.post("/v1/classify", json={"input": [base64.b64encode(files[0]).decode(), body]})
            message = reply.json()["error"]["message"]
            expected = 413 if problem == "over the byte limit" else 400
            assert reply.status_code == expected and "input 1" in message and "\n" not in message, (problem, message)


@every(of_kind[CAUSAL_LM] + of_kind[SEQ2SEQ])
def test_streamed_completions_match_the_whole_reply(spec):
    with client_for(spec) as client:
        body = {**REQUESTS["/v1/completions"], "max_tokens": 8}
        whole = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
        with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as reply:
            assert reply.status_code == 200
            events = [line[len("data: "):] for line in reply.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(event)["choices"][0] for event in events[:-1]]
        assert "".join(c["text"] for c in chunks) == whole
        assert chunks[-1]["finish_reason"] in ("stop", "length")


# -- causal kinds: the decode state equals recomputation; beam search runs ----------------------

PROMPTS = [[5, 9, 2, 7, 1, 3, 8], [4, 6], [2, 2, 9, 11]]  # different lengths: the batch is left padded


@every(of_kind[CAUSAL_LM])
def test_greedy_decoding_with_the_state_equals_recomputation(spec):
    model = tiny_model(spec).eval()
    greedy = Sampling(max_new_tokens=6, temperature=0)
    with_state = generate(model, PROMPTS, greedy)
    recomputed = generate(model, PROMPTS, dataclasses.replace(greedy, use_cache=False))
    alone = [generate(model, [prompt], greedy)[0] for prompt in PROMPTS]
    assert with_state == recomputed == alone
    assert all(len(row) == 6 for row in with_state)


@every(of_kind[CAUSAL_LM])
def test_beam_search_runs_and_ranks_its_hypotheses(spec):
    model = tiny_model(spec).eval()
    results = causal_beam_search(model, PROMPTS[:2], BeamSearch(num_beams=3, max_new_tokens=4, num_return=2))
    for hypotheses in results:
        assert len(hypotheses) == 2 and hypotheses[0].score >= hypotheses[1].score
        assert all(len(h.tokens) == 4 for h in hypotheses)
    one_beam = causal_beam_search(model, PROMPTS[:2], BeamSearch(num_beams=1, max_new_tokens=4))
    assert [h[0].tokens for h in one_beam] == generate(model, PROMPTS[:2], Sampling(max_new_tokens=4, temperature=0))


# -- Hugging Face: export and import round-trip where the family has a spec ---------------------

CONVERTIBLE = [s for s in SPECS if hf_spec_for(s.name) is not None]
NOT_CONVERTIBLE = [s for s in SPECS if hf_spec_for(s.name) is None]


@every(CONVERTIBLE)
def test_hugging_face_export_and_import_round_trip(spec, tmp_path):
    model = tiny_model(spec).eval()
    batch = example(spec, model)
    export_hf(model, tmp_path / "hf")
    back, _ = import_hf(tmp_path / "hf")
    assert back.config.family == spec.name
    with torch.no_grad():
        torch.testing.assert_close(back(**batch).logits, model(**batch).logits, rtol=0, atol=1e-5)


@every(NOT_CONVERTIBLE)
def test_export_of_a_family_without_hugging_face_spec_is_one_line(spec, tmp_path):
    with pytest.raises(UserError) as err:
        export_hf(tiny_model(spec), tmp_path / "hf")
    assert "\n" not in str(err.value) and not (tmp_path / "hf").exists()


# -- compression reaches every layer's projections (or the family refuses in one line) ----------

@every(SPECS)
def test_compression_reaches_the_projections_of_every_block(spec):
    model = tiny_model(spec).eval()
    blocks = [m for m in model.modules() if isinstance(m, spec.block_class)]
    assert blocks
    for block in blocks:  # every linear of every block is some target's projection
        reached = {id(linear) for *_, linear in find_linears(block)}
        missed = [n for n, m in block.named_modules() if isinstance(m, torch.nn.Linear) and id(m) not in reached]
        assert reached and not missed, f"compression misses {missed} in a {spec.block_class.__name__}"
    targeted = len(find_linears(model))
    batch = example(spec, model)
    with torch.no_grad():
        reference = model(**batch).logits
    lora = copy.deepcopy(model)
    inject_lora(lora, rank=2, targets=ALL_TARGETS)
    assert len(lora_modules(lora)) == targeted
    quantized = quantize_model(copy.deepcopy(model), "dynamic_int8")
    assert not find_linears(quantized)  # every targeted projection was replaced
    with torch.no_grad():
        torch.testing.assert_close(lora(**batch).logits, reference)
        cosine = F.cosine_similarity(quantized(**batch).logits.flatten(), reference.flatten(), dim=0)
    assert cosine > 0.99
    pruned = copy.deepcopy(model)
    prune_magnitude(pruned, 0.5)
    zeros = [(linear.weight == 0).sum().item() for *_, linear in find_linears(pruned)]
    sizes = [linear.weight.numel() for *_, linear in find_linears(pruned)]
    assert all(zeros) and sum(zeros) / sum(sizes) == pytest.approx(0.5, abs=0.01)
    try:
        prune_structured(copy.deepcopy(model), amount=0.25)
    except UserError as err:  # a family whose heads cannot go one by one says so, in one line
        assert "\n" not in str(err) and spec.name in str(err)


# -- the command line on a tiny checkpoint of every family ---------------------------------------

def corpus_for(spec, directory):
    """A small training file of the kind's task: text, source<TAB>target pairs, a graph, or for a
    classifier an .npz of random raw items x of its modality and labels y."""
    if spec.kind == GRAPH:
        return graph_file(spec, directory / "graph.npz")
    if spec.kind == DUAL_ENCODER:
        return pairs_folder(spec, directory / "pairs")
    if spec.kind == CLASSIFIER:
        processor = spec.processor.example(preset(spec.tiny_preset))
        path = directory / "labelled.npz"
        np.savez(path, x=processor.example_items(12, np.random.default_rng(0)), y=np.array(["cat", "dog", "owl"] * 4))
        return path
    lines = [f"the {a} sat on the {b} number {i % 10}." for i, (a, b) in
             enumerate([("cat", "mat"), ("dog", "log"), ("bird", "wire")] * 100)]
    path = directory / ("pairs.tsv" if spec.kind == SEQ2SEQ else "text.txt")
    rows = [f"{line}\t{line[::-1]}" for line in lines] if spec.kind == SEQ2SEQ else lines
    path.write_text("\n".join(rows) + "\n")
    return path


@every(SPECS)
def test_the_cli_verbs_run_on_a_tiny_checkpoint(spec, tmp_path, capsys):
    data = corpus_for(spec, tmp_path)
    run = tmp_path / "run"
    assert main(["train", "--preset", spec.tiny_preset, "--data", str(data), "--out", str(run), "train.max_steps=2",
                 "train.eval_interval=2", "train.eval_batches=1", "train.batch_size=2", "train.progress=false",
                 "train.device=cpu"]) == 0
    capsys.readouterr()
    if spec.kind in (CAUSAL_LM, SEQ2SEQ):
        assert main(["generate", str(run), "--prompt", "the cat", "--max-new-tokens", "3", "--temperature", "0"]) == 0
        assert main(["generate", str(run), "--prompt", "the cat", "--max-new-tokens", "3", "--beams", "2",
                     "--n-best", "2"]) == 0
        outputs = json.loads(capsys.readouterr().out.splitlines()[-1])["outputs"]
        assert len(outputs) == 2 and outputs[0]["score"] >= outputs[1]["score"]
    assert main(["eval", str(run), "--data", str(data), "--max-new-tokens", "3"] if spec.kind == SEQ2SEQ
                else ["eval", str(run), "--data", str(data)]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert all(math.isfinite(v) for v in scores.values() if isinstance(v, float))
    if spec.kind == CLASSIFIER:
        classifier_verbs(spec, data, run, tmp_path, capsys)
    if spec.kind == DUAL_ENCODER:
        dual_encoder_verbs(data, run, capsys)
    exported = main(["convert", "export", str(run), str(tmp_path / "hf")])
    assert exported == (0 if hf_spec_for(spec.name) else 2)
    args = build_parser().parse_args(["serve", str(run), "--threads", "1", "--port", str(free_port())])
    with TestClient(server_app(args)) as client:
        assert client.get("/health").json()["family"] == spec.name


def classifier_verbs(spec, data, run, tmp_path, capsys):
    """eval's scores and confusion PNG; classify of a labelled set and of single files."""
    assert main(["eval", str(run), "--data", str(data), "--plot", str(tmp_path / "confusion.png")]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["examples"] == 12 and sorted(scores["labels"]) == ["cat", "dog", "owl"]
    assert 0 <= scores["accuracy"] <= 1 and 0 <= scores["macro_f1"] <= 1 and (tmp_path / "confusion.png").is_file()
    assert main(["classify", str(run), "--input", str(data)]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 12 and "accuracy" in err and "macro F1" in err
    files = []
    for i, content in enumerate(media_files(spec, 2)):
        files.append(tmp_path / f"item{i}.npy")
        files[-1].write_bytes(content)
    assert main(["classify", str(run), *map(str, files)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["input"] for row in rows] == list(map(str, files))
    assert all(row["label"] in scores["labels"] for row in rows)
    missing = tmp_path / "missing.npy"
    assert main(["classify", str(run), str(missing)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and str(missing) in err


def dual_encoder_verbs(data, run, capsys):
    """Zero-shot classify of image files and a labelled set; embed of texts and images into one
    space; search of images by text and of captions by image; eval's recall on the pairs."""
    images = sorted(str(p) for p in (data / "img").iterdir())[:2]
    assert main(["classify", str(run), *images, "--labels", "cat,dog,owl", "--template", "a {}",
                 "--template", "the {} sat"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["input"] for row in rows] == images and all(row["label"] in ("cat", "dog", "owl") for row in rows)
    assert main(["classify", str(run), *images]) == 2 and "--labels" in capsys.readouterr().err
    assert main(["embed", "--model", str(run), "--images", *images]) == 0
    image_rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    (data / "texts.txt").write_text("the cat\na dog\n")
    assert main(["embed", str(data / "texts.txt"), "--model", str(run)]) == 0
    text_rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["image"] for r in image_rows] == images and [r["text"] for r in text_rows] == ["the cat", "a dog"]
    assert len({len(r["embedding"]) for r in image_rows + text_rows}) == 1
    assert main(["search", str(data / "img"), "a cat", "--model", str(run), "--top-k", "2", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["results"]
    assert len(hits) == 2 and all(hit["image"] in map(str, (data / "img").iterdir()) for hit in hits)
    assert main(["search", str(data / "texts.txt"), images[0], "--query-images", "--model", str(run), "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["results"]
    assert sorted(hit["passage"] for hit in hits) == ["a dog", "the cat"]
    assert main(["eval", str(run), "--data", str(data)]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["pairs"] == 12 and all(0 <= scores[f"{way}_recall@{k}"] <= 1 for way in ("image_to_text",
                                                                                           "text_to_image")
                                         for k in (1, 5))


def pairs_folder(spec, directory):
    """A pairs folder of the tiny model's random .npy images, each captioned "a cat", "a dog" or "an owl" and a number."""
    processor = spec.processor.example(preset(spec.tiny_preset))
    (directory / "img").mkdir(parents=True)
    lines = []
    for i, item in enumerate(processor.example_items(12, np.random.default_rng(0))):
        np.save(directory / "img" / f"{i}.npy", item)
        lines.append(json.dumps({"image": f"img/{i}.npy", "text": f"{['a cat', 'a dog', 'an owl'][i % 3]} {i}"}))
    (directory / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return directory


@every(of_kind[ENCODER])
def test_an_encoder_serves_its_whole_context_and_refuses_more_in_one_line(spec):
    context = preset(spec.tiny_preset).max_seq_len  # the example tokenizer has one token per character
    with client_for(spec) as client:
        assert client.post("/v1/embeddings", json={"input": "a" * context}).status_code == 200
        reply = client.post("/v1/embeddings", json={"input": "a" * (context + 1)})
        assert reply.status_code == 400 and f"context of {context} tokens" in reply.json()["error"]["message"]


def graph_file(spec, path):
    """The tiny model's example graph as an .npz graph file: its labelled nodes split for training
    and validation, all of them for testing."""
    config = preset(spec.tiny_preset)
    batch = spec.example_batch(config, torch.Generator().manual_seed(0))
    labelled = batch["labels"] != -100
    train = labelled & (torch.arange(len(labelled)) % 4 == 0)
    y = batch["labels"].clamp(min=0)
    y[0] = config.num_classes - 1  # every class present: the task reads the class count from y
    np.savez(path, x=batch["x"].numpy(), y=y.numpy(), edge_index=batch["edge_index"].numpy(),
             train_mask=train.numpy(), val_mask=(labelled & ~train).numpy(), test_mask=labelled.numpy())
    return path


def free_port() -> int:
    """A port nothing listens on (serve checks it can bind before it loads anything)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
