"""The HTTP server: OpenAI-shaped endpoints in front of one checkpoint.

    POST /v1/completions   causal LMs and seq2seq models (prompt = source): prompt, max_tokens,
                           temperature, top_p, stop, n, seed, stream (SSE)
    POST /v1/embeddings    encoders: mean-pooled, L2-normalised last hidden states
    POST /v1/classify      classifiers: label probabilities
    GET  /health           liveness and what is loaded
    GET  /metrics          Prometheus text: requests, tokens, queue depth, latency histograms

Bad requests get a 4xx with one message in OpenAI's error shape; a full queue gets 429 with
Retry-After; a request past its time limit gets 504. A client that disconnects has its
sequences cancelled at the next decoding step.
"""

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import threading
import time
import uuid
from typing import Optional, Union

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ..errors import UserError
from ..data.seq2seq import decode_target, encode_source
from ..inference import Sampling, seq2seq_generate
from ..inference.generate import cut_at_stop
from ..models.base import CAUSAL_LM, ENCODER, KINDS, SEQ2SEQ, family_spec
from ..layers import mean_pool
from .engine import Engine, EngineConfig, QueueFull, Sequence
from .metrics import Counter, Gauge, Histogram, Registry

MAX_STOP_STRINGS = 4
DISCONNECT_POLL_S = 0.1  # how often a waiting non-streaming request checks that its client is still there


@dataclasses.dataclass
class ServeConfig:
    max_batch: int = 16  # sequences decoded together
    max_queue: int = 64  # sequences (or encoder requests) waiting; more get 429
    timeout_s: float = 60.0  # per request
    model_name: str = "attnlab"


class ApiError(Exception):
    def __init__(self, status, message, kind="invalid_request_error", headers=None):
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers


# -- request bodies (unknown fields and wrong types are refused) -----------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class CompletionRequest(_Body):
    prompt: Union[str, list[str]] = Field(min_length=1)
    model: Optional[str] = None
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=16)
    stop: Optional[Union[str, list[str]]] = None
    seed: Optional[int] = None
    stream: bool = False


class EncodeRequest(_Body):
    input: Union[str, list[str]] = Field(min_length=1)
    model: Optional[str] = None


# The endpoints each kind of model answers (models/base.py KINDS); the others are refused with a 400.
ENDPOINTS = {CAUSAL_LM: ("/v1/completions",), SEQ2SEQ: ("/v1/completions",),
             ENCODER: ("/v1/embeddings", "/v1/classify")}


class ServerMetrics:
    def __init__(self, worker):
        self.registry = Registry()
        add = self.registry.add
        self.requests = add(Counter("attnlab_requests_total", "HTTP requests answered", ("path", "status")))
        self.latency = add(Histogram("attnlab_request_latency_seconds", "Time to the last byte of a response",
                                     ("path",)))
        self.first_token = add(Histogram("attnlab_time_to_first_token_seconds",
                                         "Time from request to the first generated text"))
        self.prompt_tokens = add(Counter("attnlab_prompt_tokens_total", "Prompt tokens processed"))
        self.generated_tokens = add(Counter("attnlab_generated_tokens_total", "Tokens generated"))
        add(Gauge("attnlab_queue_depth", "Sequences or requests waiting for the model",
                  lambda: worker.queue_depth))
        add(Gauge("attnlab_running_sequences", "Sequences in the running batch", lambda: worker.running))


class MetricsMiddleware:
    """Pure ASGI, so streaming responses pass through untouched: counts each response by path
    and status and times it to its last byte."""

    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def record(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            path = scope["path"] if scope["path"] in KNOWN_PATHS else "other"
            self.metrics.requests.inc(1, path, str(status[0]))
            self.metrics.latency.observe(time.perf_counter() - start, path)


KNOWN_PATHS = ("/v1/completions", "/v1/embeddings", "/v1/classify", "/health", "/metrics")


class ModelRunner:
    """Requests that run whole (encoders, seq2seq decoding) run one at a time on a worker thread,
    with a bounded number waiting and a time limit each."""

    def __init__(self, model, max_queue, timeout_s):
        self.model, self.max_queue, self.timeout_s = model, max_queue, timeout_s
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="attnlab-encoder")
        self.pending = 0
        self.lock = threading.Lock()

    async def run(self, fn, *args):
        with self.lock:
            if self.pending >= self.max_queue:
                raise QueueFull(f"{self.pending} requests are already waiting (limit {self.max_queue})")
            self.pending += 1
        try:
            job = asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
            return await asyncio.wait_for(job, self.timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(504, "the request ran past the server's time limit; send fewer or shorter inputs",
                           "timeout_error") from None
        finally:
            with self.lock:
                self.pending -= 1

    @property
    def queue_depth(self) -> int:
        return self.pending

    @property
    def running(self) -> int:
        return 0


def tokenize_batch(tokenizer, texts, pad_id=0) -> dict:
    """Texts -> {"input_ids", "attention_mask"[, "token_type_ids"]} (B, T), right-padded, with the
    tokenizer's special tokens: its own batch_encode when it has one (WordPiece/BPE), else ids
    padded here."""
    if hasattr(tokenizer, "batch_encode"):
        return tokenizer.batch_encode(texts)
    rows = [tokenizer.encode(t) for t in texts]
    ids = torch.full((len(rows), max(map(len, rows))), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, :len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask}


@torch.no_grad()
def run_encoder(model, batch):
    device = next(model.parameters()).device
    return model(**{k: v.to(device) for k, v in batch.items()})


def embed(model, batch) -> list:
    """Mean of the last hidden states over real tokens, L2-normalised (the sentence-transformers
    recipe): (B, C)."""
    out = run_encoder(model, batch)
    if out.hidden_states is None:
        raise ApiError(400, f"the {model.config.family} model returns no hidden states to embed")
    pooled = mean_pool(out.hidden_states, batch["attention_mask"].to(out.hidden_states.device))
    return torch.nn.functional.normalize(pooled.float(), dim=-1).tolist()


def classify(model, batch) -> list:
    out = run_encoder(model, batch)
    if out.logits is None or out.logits.dim() != 2:
        raise ApiError(400, f"the {model.config.family} model is not a sequence classifier")
    return out.logits.float().softmax(-1).tolist()


def label_names(config, count: int) -> list:
    """The classifier config's id2label in index order; LABEL_i when it names none."""
    if config.id2label:
        return [config.id2label[str(i)] for i in range(count)]
    return [f"LABEL_{i}" for i in range(count)]


def create_app(model, tokenizer, config: ServeConfig = None) -> FastAPI:
    config = config or ServeConfig()
    kind = family_spec(model).kind
    causal = kind == CAUSAL_LM
    context = model.config.max_seq_len
    if causal:
        worker = Engine(model, EngineConfig(config.max_batch, config.max_queue, config.timeout_s))
    else:
        worker = ModelRunner(model, config.max_queue, config.timeout_s)
    metrics = ServerMetrics(worker)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if causal:
            worker.start()
        yield
        if causal:
            worker.stop(timeout=10)
        else:
            worker.pool.shutdown(cancel_futures=True)

    app = FastAPI(title="attnlab", lifespan=lifespan)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.state.worker = worker

    def need(endpoint):
        if endpoint not in ENDPOINTS[kind]:
            wanted = " or ".join(KINDS[k] for k, paths in ENDPOINTS.items() if endpoint in paths)
            raise ApiError(400, f"{endpoint} is not served here: the loaded {model.config.family} model is "
                                f"{KINDS[kind]}, which answers {', '.join(ENDPOINTS[kind])}; start the server with "
                                f"{wanted} checkpoint")

    def encode(prompt):
        ids = tokenizer.encode(prompt)
        if not ids:
            raise ApiError(400, "prompt is empty after tokenization; send at least one token")
        return ids

    # -- errors ------------------------------------------------------------------------------
    def error_response(status, message, kind="invalid_request_error", headers=None):
        return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request, err: ApiError):
        return error_response(err.status, err.message, err.kind, err.headers)

    @app.exception_handler(UserError)
    async def _user_error(request, err: UserError):
        return error_response(400, str(err))

    @app.exception_handler(QueueFull)
    async def _queue_full(request, err: QueueFull):
        return error_response(429, f"server busy: {err}; retry later", "rate_limit_error", {"Retry-After": "1"})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, err: RequestValidationError):
        return error_response(422, "; ".join(_describe(e) for e in err.errors()))

    # -- endpoints ---------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        return {"status": "ok", "model": config.model_name, "family": model.config.family,
                "kind": kind, "context": context,
                "queue_depth": worker.queue_depth, "running": worker.running}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.registry.render(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        need("/v1/completions")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > MAX_STOP_STRINGS:
            raise ApiError(400, f"stop: at most {MAX_STOP_STRINGS} stop strings, got {len(stop)}")
        if len(prompts) * body.n > config.max_queue:
            raise ApiError(400, f"{len(prompts)} prompts x n={body.n} asks for more sequences than the server queues "
                                f"({config.max_queue}); split the request")
        if not causal:
            return await _translate(body, prompts, stop)
        encoded = [encode(p) for p in prompts]
        for ids in encoded:
            if not worker.recurrent and len(ids) + body.max_tokens > context:
                raise ApiError(400, f"prompt ({len(ids)} tokens) + max_tokens ({body.max_tokens}) exceeds the "
                                    f"model's context of {context} tokens; shorten the prompt or lower max_tokens")
        loop, channel = asyncio.get_running_loop(), asyncio.Queue()
        deadline = time.monotonic() + config.timeout_s
        sequences = []
        for index in range(len(prompts) * body.n):
            sampling = Sampling(max_new_tokens=body.max_tokens, temperature=body.temperature, top_p=body.top_p,
                                seed=None if body.seed is None else body.seed + index)
            emit = _thread_safe_put(loop, channel, index, metrics)
            sequences.append(Sequence(encoded[index // body.n], sampling, tokenizer, emit, stop, deadline))
        worker.submit(sequences)
        metrics.prompt_tokens.inc(sum(len(ids) for ids in encoded) * body.n)
        reply = Reply(body, config.model_name, sequences, channel, metrics, sum(map(len, encoded)) * body.n)
        if body.stream:
            return StreamingResponse(reply.events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return await reply.collect(request)

    @app.post("/v1/embeddings")
    async def embeddings(body: EncodeRequest):
        need("/v1/embeddings")
        batch = _encoder_batch(body)
        vectors = await worker.run(embed, model, batch)
        tokens = int(batch["attention_mask"].sum())
        return {"object": "list", "model": config.model_name,
                "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @app.post("/v1/classify")
    async def classify_texts(body: EncodeRequest):
        need("/v1/classify")
        probabilities = await worker.run(classify, model, _encoder_batch(body))
        names = label_names(model.config, len(probabilities[0]))
        data = []
        for i, probs in enumerate(probabilities):
            best = max(range(len(probs)), key=probs.__getitem__)
            data.append({"index": i, "label": names[best], "score": probs[best],
                         "scores": dict(zip(names, probs))})
        return {"object": "list", "model": config.model_name, "data": data}

    async def _translate(body, sources, stop):
        """Seq2seq completions: each prompt is a source, decoded whole on the worker thread."""
        sampling = Sampling(max_new_tokens=body.max_tokens, temperature=body.temperature, top_p=body.top_p,
                            seed=body.seed)
        rows = [source for source in sources for _ in range(body.n)]
        results = await worker.run(complete_sources, model, tokenizer, rows, sampling, stop)
        prompt_tokens = sum(len(tokenizer.source.encode(source)) + 1 for source in rows)
        reply = WholeReply(config.model_name, results, prompt_tokens)
        if body.stream:
            return StreamingResponse(reply.events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return reply.body()

    def _encoder_batch(body):
        texts = [body.input] if isinstance(body.input, str) else body.input
        batch = tokenize_batch(tokenizer, texts, model.config.pad_token_id)
        for i, length in enumerate(batch["attention_mask"].sum(1).tolist()):
            if length == 0:
                raise ApiError(400, f"input {i} is empty after tokenization; send at least one token")
            if length > context:
                raise ApiError(400, f"input {i} has {length} tokens, more than the model's context of {context} "
                                    "tokens; shorten it")
        return batch

    return app


def complete_sources(model, tokenizers, sources, sampling: Sampling, stop=()) -> list:
    """Seq2seq decoding of source texts -> [(text, finish_reason, generated tokens)]."""
    c = model.config
    encoded = [encode_source(tokenizers, source, c.eos_id) for source in sources]
    results = []
    for tokens in seq2seq_generate(model, encoded, sampling):
        text, hit_stop = cut_at_stop(decode_target(tokenizers, tokens, {c.pad_id, c.eos_id, c.decoder_start_id}), stop)
        finish = "length" if len(tokens) >= sampling.max_new_tokens and not hit_stop else "stop"
        results.append((text, finish, len(tokens)))
    return results


class WholeReply:
    """A completion request whose outputs arrive all at once (seq2seq): a JSON body, or server-sent
    events with one chunk per choice."""

    def __init__(self, model_name, results, prompt_tokens):
        self.model_name, self.results, self.prompt_tokens = model_name, results, prompt_tokens
        self.id, self.created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())

    def _choice(self, index, text, finish):
        return {"index": index, "text": text, "finish_reason": finish, "logprobs": None}

    def body(self) -> dict:
        completion_tokens = sum(n for _, _, n in self.results)
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model_name,
                "choices": [self._choice(i, text, finish) for i, (text, finish, _) in enumerate(self.results)],
                "usage": {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": self.prompt_tokens + completion_tokens}}

    async def events(self):
        for index, (text, finish, _) in enumerate(self.results):
            for piece, reason in ((text, None), ("", finish)):
                yield _sse({"id": self.id, "object": "text_completion", "created": self.created,
                            "model": self.model_name, "choices": [self._choice(index, piece, reason)]})
        yield "data: [DONE]\n\n"


class Reply:
    """Gathers one completion request's events into a JSON body or a server-sent event stream."""

    def __init__(self, body, model_name, sequences, channel, metrics, prompt_tokens):
        self.body, self.model_name, self.sequences, self.channel = body, model_name, sequences, channel
        self.metrics, self.prompt_tokens = metrics, prompt_tokens
        self.id, self.created, self.started = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time()), time.perf_counter()
        self.texts = [""] * len(sequences)
        self.finish = [None] * len(sequences)
        self.completion_tokens = 0
        self.first_seen = False

    def _take(self, index, event):
        if event[0] == "text":
            if not self.first_seen:
                self.first_seen = True
                self.metrics.first_token.observe(time.perf_counter() - self.started)
            self.texts[index] += event[1]
        else:
            self.finish[index] = event[1]
            self.completion_tokens += event[2]

    def cancel(self):
        for seq in self.sequences:
            seq.cancel()

    def _failure(self):
        reasons = set(self.finish) - {"stop", "length"}
        if "error" in reasons:
            return ApiError(500, "generation failed on the server; the failure is logged", "server_error")
        if "timeout" in reasons:
            return ApiError(504, "the request ran past the server's time limit; lower max_tokens or retry",
                            "timeout_error")
        if "cancelled" in reasons:
            return ApiError(503, "the server is shutting down; retry elsewhere or later", "server_error")
        return None

    def _chunk(self, index, text, finish_reason):
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model_name,
                "choices": [{"index": index, "text": text, "finish_reason": finish_reason, "logprobs": None}]}

    async def collect(self, request: Request):
        """Wait for every sequence, cancelling them if the client goes away."""
        next_check = time.monotonic() + DISCONNECT_POLL_S
        try:
            while None in self.finish:
                with contextlib.suppress(asyncio.TimeoutError):
                    self._take(*await asyncio.wait_for(self.channel.get(), timeout=DISCONNECT_POLL_S))
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + DISCONNECT_POLL_S
                    if await request.is_disconnected():
                        return JSONResponse({}, status_code=499)  # nobody reads it; the log shows why
        finally:
            self.cancel()  # no-op for finished sequences
        failure = self._failure()
        if failure:
            raise failure
        choices = [{"index": i, "text": t, "finish_reason": f, "logprobs": None}
                   for i, (t, f) in enumerate(zip(self.texts, self.finish))]
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model_name,
                "choices": choices, "usage": {"prompt_tokens": self.prompt_tokens,
                                              "completion_tokens": self.completion_tokens,
                                              "total_tokens": self.prompt_tokens + self.completion_tokens}}

    async def events(self):
        """Server-sent events: one chunk per piece of text, a final chunk per choice with its
        finish_reason, then [DONE]. A disconnect closes this generator and cancels generation."""
        try:
            while None in self.finish:
                index, event = await self.channel.get()
                self._take(index, event)
                if event[0] == "text":
                    yield _sse(self._chunk(index, event[1], None))
                elif event[1] in ("stop", "length"):
                    yield _sse(self._chunk(index, "", event[1]))
            failure = self._failure()
            if failure:
                yield _sse({"error": {"message": failure.message, "type": failure.kind}})
            yield "data: [DONE]\n\n"
        finally:
            self.cancel()


def _sse(data) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _thread_safe_put(loop, channel, index, metrics):
    """The engine thread's way into this request's event loop; counts generated tokens even
    when nobody listens any more (a cancelled request)."""
    def emit(event):
        if event[0] == "done":
            metrics.generated_tokens.inc(event[2])
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
            loop.call_soon_threadsafe(channel.put_nowait, (index, event))
    return emit


def _describe(error) -> str:
    """One pydantic error -> 'field: what is wrong'."""
    where = ".".join(str(part) for part in error["loc"] if part != "body") or "body"
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown field; remove it"
    if error["type"] == "json_invalid":
        return "the request body is not valid JSON"
    if error["type"] == "missing":
        return f"{where}: required field is missing"
    return f"{where}: {error['msg']}"
