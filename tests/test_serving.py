"""The HTTP server, talked to over real HTTP on a free 127.0.0.1 port: completions (plain and
streamed), batching that gives each request the tokens it would get alone, validation, the
429 path, timeouts, disconnect cancellation, a failing request, encoder endpoints."""

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
import uvicorn
from torch import nn

from attnlab.checkpoint import save_checkpoint
from attnlab.inference import Sampling, generate
from attnlab.models import GPT, GPTConfig, Reformer, ReformerConfig, TransformerXL, TransformerXLConfig
from attnlab.models.bert import Bert, BertConfig
from attnlab.serving import engine as engine_module
from attnlab.serving.app import ServeConfig, create_app
from attnlab.tokenizers import CharTokenizer

ALPHABET = "abcdefghijklmnopqrstuvwxyz .,!?"
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """A real uvicorn server on a free localhost port, run on a thread of the test process."""

    def __init__(self, app, grace=None):
        self.app = app
        self.url = f"http://127.0.0.1:{free_port()}"
        port = int(self.url.rsplit(":", 1)[1])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical",
                                                    timeout_graceful_shutdown=grace))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(20)

    def post(self, path, body, **kwargs):
        return httpx.post(self.url + path, json=body, timeout=kwargs.pop("timeout", 30), **kwargs)

    def get(self, path):
        return httpx.get(self.url + path, timeout=30)


def tiny_gpt(delay=0.0):
    """A small GPT with large random weights, so greedy continuations vary with the prompt;
    `delay` seconds of sleep per forward make timing-dependent paths deterministic."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=len(ALPHABET), max_seq_len=64, n_layer=2, n_head=2, d_model=32,
                          tie_weights=False))
    for p in model.parameters():
        if p.dim() == 2:
            nn.init.normal_(p, 0.0, 0.3)
    if delay:
        model.register_forward_pre_hook(lambda *_: time.sleep(delay))
    return model.eval()


@pytest.fixture(scope="module")
def tokenizer():
    return CharTokenizer(ALPHABET)


@pytest.fixture(scope="module")
def gpt_server(tokenizer):
    app = create_app(tiny_gpt(), tokenizer, ServeConfig(max_batch=8, max_queue=32, model_name="tiny"))
    with LiveServer(app) as server:
        yield server


def alone(tokenizer, prompt, max_tokens):
    ids = generate(tiny_gpt(), [tokenizer.encode(prompt)], Sampling(max_new_tokens=max_tokens, temperature=0))[0]
    return tokenizer.decode(ids)


def sse_events(response):
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            payload = line[len("data: "):]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


# -- completions ------------------------------------------------------------------------------
def test_greedy_completion_matches_generate(gpt_server, tokenizer):
    r = gpt_server.post("/v1/completions", {"prompt": "the cat", "max_tokens": 12, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["model"] == "tiny"
    assert body["choices"][0]["text"] == alone(tokenizer, "the cat", 12)
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 12, "total_tokens": 19}


def test_streaming_sends_the_same_text_piece_by_piece(gpt_server, tokenizer):
    with httpx.stream("POST", gpt_server.url + "/v1/completions", timeout=30,
                      json={"prompt": "a dog", "max_tokens": 10, "temperature": 0, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len(chunks) >= 10  # one per token, plus the final chunk
    assert "".join(c["choices"][0]["text"] for c in chunks) == alone(tokenizer, "a dog", 10)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


def test_concurrent_requests_are_batched_and_each_gets_its_solo_tokens(gpt_server, tokenizer):
    prompts = ["the cat", "a", "hello there, world", "zz", "why?", "on the mat.", "q", "a longer prompt here"]
    lengths = [5 + 3 * i for i in range(len(prompts))]
    engine = gpt_server.app.state.worker
    steps_before = engine.steps

    def ask(i):
        return gpt_server.post("/v1/completions", {"prompt": prompts[i], "max_tokens": lengths[i], "temperature": 0})

    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        replies = list(pool.map(ask, range(len(prompts))))
    for prompt, n, reply in zip(prompts, lengths, replies):
        assert reply.status_code == 200
        assert reply.json()["choices"][0]["text"] == alone(tokenizer, prompt, n), prompt
    # one decoding step per token per request would be sum(lengths - 1) steps; batching takes fewer
    assert engine.steps - steps_before < sum(n - 1 for n in lengths)


def tiny_long_lm(family):
    """A Transformer-XL whose memory (16 tokens) is shorter than the requests, or a Reformer
    whose one local chunk covers its window; large random weights, as tiny_gpt."""
    torch.manual_seed(0)
    if family == "transformer_xl":
        model = TransformerXL(TransformerXLConfig(vocab_size=len(ALPHABET), max_seq_len=32, segment_length=8, mem_len=16,
                                                  n_layer=2, n_head=2, d_model=32, tie_weights=False))
    else:
        model = Reformer(ReformerConfig(vocab_size=len(ALPHABET), max_seq_len=64, n_layer=2, n_head=2, d_model=32,
                                        chunk_length=64, local_chunk_length=64, attn_layers=["local", "local"],
                                        axial_shape=[8, 8], axial_dims=[16, 16]))
    for p in model.parameters():
        if p.dim() == 2:
            nn.init.normal_(p, 0.0, 0.3)
    return model.eval()


@pytest.mark.parametrize("family", ["transformer_xl", "reformer"])
def test_every_causal_family_is_served_batched_with_its_solo_tokens(tokenizer, family):
    """The engine decodes through the model's own state (a recurrent memory, or the window
    re-read), so a Transformer-XL or a Reformer batches like GPT; the recurrent one has no
    context limit."""
    model = tiny_long_lm(family)
    prompts = ["the cat", "a", "hello there, world", "zz", "why?", "q"]
    lengths = [5 + 4 * i for i in range(len(prompts))]  # XL: up to 38 tokens, past its max_seq_len of 32
    app = create_app(model, tokenizer, ServeConfig(max_batch=8, model_name="tiny"))
    with LiveServer(app) as server, concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        assert app.state.worker.recurrent == (family == "transformer_xl")
        steps_before = app.state.worker.steps
        replies = list(pool.map(lambda i: server.post("/v1/completions", {
            "prompt": prompts[i], "max_tokens": lengths[i], "temperature": 0}), range(len(prompts))))
        batched_steps = app.state.worker.steps - steps_before
    for prompt, n, reply in zip(prompts, lengths, replies):
        assert reply.status_code == 200, reply.text
        expected = generate(model, [tokenizer.encode(prompt)], Sampling(max_new_tokens=n, temperature=0))[0]
        assert reply.json()["choices"][0]["text"] == tokenizer.decode(expected), prompt
    assert batched_steps < sum(n - 1 for n in lengths)


def test_n_choices_seeded_sampling_and_stop_strings(gpt_server, tokenizer):
    body = {"prompt": "the", "max_tokens": 8, "temperature": 1.0, "top_p": 0.9, "n": 3, "seed": 7}
    first, second = gpt_server.post("/v1/completions", body).json(), gpt_server.post("/v1/completions", body).json()
    assert [c["index"] for c in first["choices"]] == [0, 1, 2]
    assert first["choices"] == second["choices"]  # seeded: reproducible
    full = alone(tokenizer, "the cat", 20)
    stop = full[8:10]
    r = gpt_server.post("/v1/completions", {"prompt": "the cat", "max_tokens": 20, "temperature": 0, "stop": [stop]})
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["text"] == full[:full.find(stop)]


def test_health_and_prometheus_metrics(gpt_server):
    gpt_server.post("/v1/completions", {"prompt": "abc", "max_tokens": 3})
    health = gpt_server.get("/health").json()
    assert health["status"] == "ok" and health["kind"] == "causal_lm" and health["context"] == 64
    text = gpt_server.get("/metrics").text
    assert 'attnlab_requests_total{path="/v1/completions",status="200"}' in text
    assert 'attnlab_request_latency_seconds_bucket{path="/v1/completions",le="+Inf"}' in text
    assert "attnlab_queue_depth 0" in text
    generated = [line for line in text.splitlines() if line.startswith("attnlab_generated_tokens_total")]
    assert float(generated[0].split()[1]) >= 3


# -- validation ---------------------------------------------------------------------------------
@pytest.mark.parametrize("body, status, words", [
    ({"prompt": "abc", "max_tokens": 4, "temprature": 0.5}, 422, "temprature: unknown field"),
    ({"prompt": "abc", "max_tokens": -3}, 422, "max_tokens"),
    ({"prompt": "abc", "max_tokens": 10 ** 9}, 400, "context of 64 tokens"),
    ({"prompt": "a" * 65, "max_tokens": 1}, 400, "prompt (65 tokens)"),
    ({"prompt": 5, "max_tokens": 4}, 422, "prompt"),
    ({"prompt": "abc", "max_tokens": "ten"}, 422, "max_tokens"),
    ({"prompt": "abc", "temperature": "hot"}, 422, "temperature"),
    ({"prompt": "abc", "top_p": 0}, 422, "top_p"),
    ({"max_tokens": 4}, 422, "prompt: required field is missing"),
    ({"prompt": "ABC"}, 400, "never saw"),
    ({"prompt": "abc", "stop": ["a", "b", "c", "d", "e"]}, 422, "stop: List should have at most 4 items"),
    ({"prompt": ["ab"] * 3, "n": 16}, 400, "split the request"),
])
def test_bad_requests_get_a_clear_4xx(gpt_server, body, status, words):
    r = gpt_server.post("/v1/completions", body)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"]


@pytest.mark.parametrize("body, words", [
    ({"prompt": "abc", "seed": 2 ** 64}, "seed: Input should be less than or equal to 18446744073709551615"),
    ({"prompt": "abc", "seed": -1}, "seed: Input should be greater than or equal to 0"),
    ({"prompt": "abc", "max_tokens": 2 ** 63}, "max_tokens: Input should be less than or equal to 2147483647"),
    ({"prompt": []}, "prompt: List should have at least 1 item after validation, not 0"),
    ({"prompt": ["ab", ""]}, "prompt.1: String should have at least 1 character"),
    ({"prompt": ""}, "prompt: String should have at least 1 character"),
    ({"prompt": "abc", "stop": [""]}, "stop.0: String should have at least 1 character"),
    ({"prompt": "abc", "temperature": float("nan")}, "temperature: Input should be a finite number"),
    ({"prompt": "abc", "top_p": float("inf")}, "top_p: Input should be a finite number"),
])
def test_out_of_range_fields_get_422_naming_the_field(gpt_server, body, words):
    r = httpx.post(gpt_server.url + "/v1/completions", content=json.dumps(body), timeout=10,
                   headers={"content-type": "application/json"})  # json.dumps writes NaN and Infinity as Python reads them
    assert r.status_code == 422, r.text
    assert r.json()["error"]["message"] == words


def test_the_largest_seed_samples_every_choice(gpt_server):
    body = {"prompt": "abc", "max_tokens": 3, "seed": 2 ** 64 - 1, "n": 3}
    first, second = gpt_server.post("/v1/completions", body), gpt_server.post("/v1/completions", body)
    assert first.status_code == 200, first.text
    assert first.json()["choices"] == second.json()["choices"]


@pytest.mark.parametrize("path, content, status, words", [
    ("/v1/completions", b'{"prompt": "' + bytes([0xff, 0xfe]) + b'"}', 400, "error parsing the body"),
    ("/v1/completions", b"[" * 100_000 + b"]" * 100_000, 400, "error parsing the body"),
    ("/v1/nothing", b"{}", 404, "POST /v1/nothing: Not Found"),
])
def test_unreadable_bodies_and_unknown_paths_get_the_error_shape(gpt_server, path, content, status, words):
    r = httpx.post(gpt_server.url + path, content=content, timeout=10, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"} and words in r.json()["error"]["message"]
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_openapi_documents_every_error_status_and_the_schema_refuses_empty_lists(gpt_server):
    spec = gpt_server.get("/openapi.json").json()
    for path, statuses in (("/v1/completions", {"200", "400", "422", "429", "503", "504"}),
                           ("/v1/embeddings", {"200", "400", "413", "422", "429", "503", "504"})):
        responses = spec["paths"][path]["post"]["responses"]
        assert set(responses) == statuses
        for status in statuses - {"200"}:
            assert responses[status]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    schemas = spec["components"]["schemas"]
    for model, field in (("CompletionRequest", "prompt"), ("EncodeRequest", "input")):
        text, texts = schemas[model]["properties"][field]["anyOf"]
        assert text == {"type": "string", "minLength": 1}
        assert texts["minItems"] == 1 and texts["items"] == {"type": "string", "minLength": 1}
    assert schemas["CompletionRequest"]["properties"]["seed"]["anyOf"][0]["maximum"] == float(2 ** 64 - 1)


def test_malformed_json_and_wrong_endpoint_kind(gpt_server):
    r = httpx.post(gpt_server.url + "/v1/completions", content=b"{not json", timeout=10,
                   headers={"content-type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["error"]["message"]
    r = gpt_server.post("/v1/embeddings", {"input": "abc"})
    assert r.status_code == 400 and "causal language model" in r.json()["error"]["message"]


# -- overload, timeouts, disconnects, failures ----------------------------------------------------
def test_full_queue_answers_429_with_retry_after(tokenizer):
    app = create_app(tiny_gpt(delay=0.02), tokenizer, ServeConfig(max_batch=1, max_queue=1))
    with LiveServer(app) as server, concurrent.futures.ThreadPoolExecutor(2) as pool:
        engine = app.state.worker
        running = pool.submit(server.post, "/v1/completions", {"prompt": "a", "max_tokens": 40})
        _wait_for(lambda: engine.running == 1)
        waiting = pool.submit(server.post, "/v1/completions", {"prompt": "b", "max_tokens": 2})
        _wait_for(lambda: engine.queue_depth == 1)
        refused = server.post("/v1/completions", {"prompt": "c", "max_tokens": 2})
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert "server busy" in refused.json()["error"]["message"]
        assert running.result().status_code == 200 and waiting.result().status_code == 200


def test_request_past_its_time_limit_gets_504(tokenizer):
    app = create_app(tiny_gpt(delay=0.02), tokenizer, ServeConfig(timeout_s=0.3))
    with LiveServer(app) as server:
        r = server.post("/v1/completions", {"prompt": "a", "max_tokens": 60})
        assert r.status_code == 504 and "time limit" in r.json()["error"]["message"]
        assert server.post("/v1/completions", {"prompt": "a", "max_tokens": 2}).status_code == 200


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_cancels_generation(tokenizer, stream):
    app = create_app(tiny_gpt(delay=0.02), tokenizer, ServeConfig())
    engine = app.state.worker
    with LiveServer(app) as server:
        body = {"prompt": "a", "max_tokens": 60, "stream": stream}
        with httpx.Client(timeout=httpx.Timeout(0.3)) as client:
            if stream:
                with client.stream("POST", server.url + "/v1/completions", json=body) as r:
                    next(r.iter_lines())  # the first token arrived; now hang up
            else:
                with pytest.raises(httpx.ReadTimeout):
                    client.post(server.url + "/v1/completions", json=body)
        started = engine.steps
        _wait_for(lambda: engine.running == 0, timeout=3)
        assert engine.steps - started < 30  # stopped well before its 60 tokens
        metrics = server.get("/metrics").text
        generated = float(next(line for line in metrics.splitlines() if line.startswith("attnlab_generated_tokens_total"))
                          .split()[1])
        assert generated < 60


def test_one_failing_request_does_not_take_the_server_down(tokenizer, monkeypatch):
    real = engine_module.next_token

    def flaky(logits, sampling, generator=None):
        if sampling.temperature == 0.5:
            raise RuntimeError("boom")
        return real(logits, sampling, generator)

    monkeypatch.setattr(engine_module, "next_token", flaky)
    app = create_app(tiny_gpt(), tokenizer, ServeConfig())
    with LiveServer(app) as server, concurrent.futures.ThreadPoolExecutor(2) as pool:
        bad = pool.submit(server.post, "/v1/completions", {"prompt": "ab", "max_tokens": 5, "temperature": 0.5})
        good = pool.submit(server.post, "/v1/completions", {"prompt": "ab", "max_tokens": 5, "temperature": 0})
        assert bad.result().status_code == 500
        assert good.result().status_code == 200
        assert server.get("/health").json()["status"] == "ok"


def test_a_failing_decoding_step_ends_its_batch_and_the_server_goes_on(tokenizer, monkeypatch):
    real, calls = engine_module.Engine._decode, []

    def fail_once(self):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return real(self)

    monkeypatch.setattr(engine_module.Engine, "_decode", fail_once)
    app = create_app(tiny_gpt(), tokenizer, ServeConfig())
    with LiveServer(app) as server:
        assert server.post("/v1/completions", {"prompt": "ab", "max_tokens": 8}).status_code == 500
        r = server.post("/v1/completions", {"prompt": "ab", "max_tokens": 8, "temperature": 0})
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == alone(tokenizer, "ab", 8)


def _wait_for(condition, timeout=10):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


# -- encoders ------------------------------------------------------------------------------------
def test_embeddings_match_hugging_face_minilm_and_ignore_batch_padding():
    transformers = pytest.importorskip("transformers")
    from attnlab.interop import load_minilm, minilm_path

    texts = ["A man is playing a guitar.", "The stock market fell sharply on Monday, and kept falling all week."]
    model, tokenizer = load_minilm()
    with LiveServer(create_app(model, tokenizer, ServeConfig())) as server:
        batch = server.post("/v1/embeddings", {"input": texts}).json()
        alone_vec = server.post("/v1/embeddings", {"input": texts[0]}).json()["data"][0]["embedding"]
        too_long = server.post("/v1/embeddings", {"input": "word " * 600})
        wrong = server.post("/v1/completions", {"prompt": "hi"})
    reference = transformers.BertModel.from_pretrained(minilm_path()).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path())
    inputs = hf_tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = reference(**inputs).last_hidden_state
    mask = inputs["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    ours = torch.tensor([d["embedding"] for d in batch["data"]])
    assert ours.shape == (2, 384)
    assert (ours - expected).abs().max().item() <= 1e-5
    assert (torch.tensor(alone_vec) - expected[0]).abs().max().item() <= 1e-5
    assert batch["usage"]["prompt_tokens"] == int(inputs["attention_mask"].sum())
    assert too_long.status_code == 400 and "context of 512" in too_long.json()["error"]["message"]
    assert wrong.status_code == 400 and "encoder" in wrong.json()["error"]["message"]


def test_classify_returns_the_classifier_probabilities(tokenizer):
    torch.manual_seed(0)
    model = Bert(BertConfig(vocab_size=len(ALPHABET), max_positions=32, n_layer=2, n_head=2, d_model=16,
                            head="sequence", n_labels=3)).eval()
    with LiveServer(create_app(model, tokenizer, ServeConfig())) as server:
        data = server.post("/v1/classify", {"input": ["good", "a bad movie"]}).json()["data"]
    with torch.no_grad():
        ids = torch.tensor([tokenizer.encode("a bad movie")])
        probs = model(ids, attention_mask=torch.ones_like(ids)).logits.softmax(-1)[0]
    assert list(data[1]["scores"]) == ["LABEL_0", "LABEL_1", "LABEL_2"]
    assert torch.allclose(torch.tensor(list(data[1]["scores"].values())), probs, atol=1e-5)
    assert data[1]["label"] == f"LABEL_{int(probs.argmax())}"
    assert data[1]["score"] == pytest.approx(float(probs.max()), abs=1e-5)


def slow_bert(rows_seen, seconds_per_row=0.0):
    """A tiny BERT classifier that records the rows of each forward and sleeps for each row."""
    torch.manual_seed(0)
    model = Bert(BertConfig(vocab_size=len(ALPHABET), max_positions=32, n_layer=1, n_head=2, d_model=16,
                            head="sequence", n_labels=2)).eval()

    def hook(module, args, kwargs):
        rows = len(kwargs["input_ids"])
        rows_seen.append(rows)
        time.sleep(seconds_per_row * rows)

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return model


@pytest.mark.parametrize("path", ["/v1/embeddings", "/v1/classify"])
def test_encoder_requests_past_the_input_or_token_limits_get_413(tokenizer, path):
    rows = []
    config = ServeConfig(max_inputs=4, max_request_tokens=20, encode_batch=2)
    with LiveServer(create_app(slow_bert(rows), tokenizer, config)) as server:
        many = server.post(path, {"input": ["ab"] * 5})
        long = server.post(path, {"input": ["abcdefghij"] * 3})
        fits = server.post(path, {"input": ["abcdefghi", "abcdefghi", "ab"]})  # 20 tokens
    assert many.status_code == 413 and "5 inputs in one request" in many.json()["error"]["message"]
    assert "limit of 4" in many.json()["error"]["message"]
    assert long.status_code == 413 and "30 tokens in all" in long.json()["error"]["message"]
    assert fits.status_code == 200 and len(fits.json()["data"]) == 3
    assert rows == [2, 1]  # only the request that fits ran, in batches of 2


def test_an_encoder_request_past_its_deadline_stops_and_frees_the_worker(tokenizer):
    rows = []
    app = create_app(slow_bert(rows, seconds_per_row=0.01), tokenizer, ServeConfig(timeout_s=0.5, encode_batch=4))
    with LiveServer(app) as server:
        big = server.post("/v1/embeddings", {"input": ["abc"] * 200})  # 2 s of work
        assert big.status_code == 504 and "time limit" in big.json()["error"]["message"]
        small = server.post("/v1/embeddings", {"input": "abc"})  # would wait behind the rest of it
        assert small.status_code == 200, small.text
    assert sum(rows) < 100


def test_an_encoder_request_whose_client_left_stops(tokenizer):
    rows = []
    app = create_app(slow_bert(rows, seconds_per_row=0.01), tokenizer, ServeConfig(encode_batch=4))
    with LiveServer(app) as server:
        with pytest.raises(httpx.ReadTimeout):
            server.post("/v1/embeddings", {"input": ["abc"] * 200}, timeout=0.3)
        _wait_for(lambda: app.state.worker.queue_depth == 0, timeout=3)
        done = sum(rows)
        time.sleep(0.2)
        assert sum(rows) == done < 100  # nothing more ran for it


# -- graceful shutdown, and the command line ----------------------------------------------------------
def test_shutdown_lets_an_in_flight_stream_finish(tokenizer):
    app = create_app(tiny_gpt(delay=0.01), tokenizer, ServeConfig())
    server = LiveServer(app).__enter__()
    try:
        with httpx.stream("POST", server.url + "/v1/completions", timeout=30,
                          json={"prompt": "the", "max_tokens": 40, "temperature": 0, "stream": True}) as r:
            lines = r.iter_lines()
            next(lines)
            server.server.should_exit = True  # what uvicorn's SIGTERM handler does
            events = [line for line in lines if line.startswith("data: ")]
    finally:
        server.__exit__()
    assert not server.thread.is_alive()
    assert events[-1] == "data: [DONE]"
    assert len("".join(json.loads(e[6:])["choices"][0]["text"] for e in events[:-1])) == 39
    assert not app.state.worker.thread.is_alive()  # the engine stopped with the server


@pytest.mark.parametrize("path, body", [
    ("/v1/completions", {"prompt": "the", "max_tokens": 60, "temperature": 0}),
    ("/v1/embeddings", {"input": ["abc"] * 200}),
])
def test_requests_cut_off_past_the_grace_get_503_and_streams_an_error_event(tokenizer, path, body):
    model = tiny_gpt(delay=0.02) if path == "/v1/completions" else slow_bert([], seconds_per_row=0.01)
    app = create_app(model, tokenizer, ServeConfig())
    server = LiveServer(app, grace=0.3).__enter__()
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            whole = pool.submit(server.post, path, body)
            if path == "/v1/completions":
                with httpx.stream("POST", server.url + path, timeout=30, json={**body, "stream": True}) as r:
                    lines = r.iter_lines()
                    next(lines)
                    server.server.should_exit = True
                    events = [line for line in lines if line.startswith("data: ")]
                assert events[-1] == "data: [DONE]"
                assert "shutting down" in json.loads(events[-2][6:])["error"]["message"]
            else:
                _wait_for(lambda: app.state.worker.queue_depth == 1)
                server.server.should_exit = True
            cut = whole.result()
    finally:
        server.__exit__()
    assert cut.status_code == 503 and "shutting down" in cut.json()["error"]["message"]


def test_serve_command_refuses_bad_options(tmp_path, capsys):
    from attnlab.cli import main
    assert main(["serve", str(tmp_path), "--max-batch", "0"]) == 2
    assert "--max-batch must be a positive integer" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--max-inputs", "0"]) == 2
    assert "--max-inputs must be a positive integer" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_serve_command_limits_reach_the_server(tmp_path, tokenizer):
    from fastapi.testclient import TestClient
    from attnlab.cli import build_parser
    from attnlab.commands.serve import server_app

    save_checkpoint(tmp_path / "bert", slow_bert([]), tokenizer)
    args = build_parser().parse_args(["serve", str(tmp_path / "bert"), "--max-inputs", "2", "--max-request-tokens",
                                      "5", "--device", "cpu"])
    with TestClient(server_app(args)) as client:
        many = client.post("/v1/embeddings", json={"input": ["a", "b", "c"]})
        long = client.post("/v1/embeddings", json={"input": ["abc", "abc"]})
    assert many.status_code == 413 and "limit of 2" in many.json()["error"]["message"]
    assert long.status_code == 413 and "limit of 5" in long.json()["error"]["message"]


@pytest.mark.slow
def test_serve_command_finishes_in_flight_stream_on_sigterm(tmp_path, tokenizer):
    save_checkpoint(tmp_path / "ckpt", tiny_gpt(), tokenizer)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "attnlab.cli", "serve", str(tmp_path / "ckpt"), "--port",
                             str(port), "--grace", "20"], env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(lambda: _up(url), timeout=60)
        with httpx.stream("POST", url + "/v1/completions", timeout=30,
                          json={"prompt": "the", "max_tokens": 50, "temperature": 0, "stream": True}) as r:
            lines = r.iter_lines()
            next(lines)
            proc.send_signal(signal.SIGTERM)  # stop accepting, let this stream finish
            events = [line for line in lines if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        text = "".join(json.loads(e[6:])["choices"][0]["text"] for e in events[:-1])
        assert len(text) == 49  # the first token was read above: the stream ran to max_tokens
        assert proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once shut down
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _up(url):
    try:
        return httpx.get(url + "/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
