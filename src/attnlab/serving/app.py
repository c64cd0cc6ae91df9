"""The HTTP server: OpenAI-shaped endpoints in front of one checkpoint.

    POST /v1/completions   causal LMs and seq2seq models (prompt = source): prompt, max_tokens,
                           temperature, top_p, stop, n, seed, stream (SSE)
    POST /v1/embeddings    encoders: mean-pooled, L2-normalised last hidden states
    POST /v1/classify      classifiers: label probabilities; for an image, audio or video
                           classifier each input is a base64 file (PNG, WAV, .npy, ...);
                           graph networks: a label per node of a posted graph
    GET  /health           liveness and what is loaded
    GET  /metrics          Prometheus text: requests, tokens, queue depth, latency histograms
    GET  /attention        the attention viewer's page for one input (serving/attention.py)

Every error, ours or the framework's, is one message in OpenAI's shape `{"error": {"message", "type"}}`:
422 for a body outside the schema (every numeric field has a documented range), 400 for a request
the model cannot serve or a file it cannot read, 413 for a request past the server's input, token
or byte limits, 429 with Retry-After when the queue is full, 504 past the request's time limit, 503
at shutdown (a stream cut off past the grace gets a final error event and [DONE]). A client that
disconnects has its work cancelled at the next decoding step or encoder batch.
"""

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import threading
import time
import uuid
from typing import Annotated, Literal, Optional, Union

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..data.seq2seq import decode_target, encode_source
from ..errors import UserError
from ..inference import Sampling, seq2seq_generate
from ..inference.generate import cut_at_stop
from ..layers import mean_pool
from ..models.base import CAUSAL_LM, CLASSIFIER, DUAL_ENCODER, ENCODER, GRAPH, KINDS, SEQ2SEQ, family_spec
from .engine import Engine, EngineConfig, QueueFull, Sequence, SpeculativeEngine
from .errors import ApiError
from .attention import add_attention_routes
from .graph import add_graph_routes
from .metrics import Counter, Gauge, Histogram, Registry

MAX_STOP_STRINGS = 4
DISCONNECT_POLL_S = 0.1  # how often a waiting non-streaming request checks that its client is still there


@dataclasses.dataclass
class ServeConfig:
    max_batch: int = 16  # sequences decoded together
    max_queue: int = 64  # sequences (or encoder requests) waiting; more get 429
    timeout_s: float = 60.0  # per request
    model_name: str = "attnlab"
    max_inputs: int = 256  # inputs per /v1/embeddings or /v1/classify request; more get 413
    max_request_tokens: int = 32768  # tokens per encoder request, all inputs together; more get 413
    encode_batch: int = 32  # inputs the encoder runs at once; a request's time limit is checked between batches
    max_input_bytes: int = 8 * 2 ** 20  # per decoded file sent to an image/audio/video classifier; more get 413
    max_nodes: int = 50_000  # nodes of a graph posted to a graph network; more get 413
    max_edges: int = 1_000_000  # edges of a posted graph; more get 413
    draft_tokens: Union[int, str, None] = None  # with a drafter: tokens per row and step, "auto", or its default


# -- request bodies (unknown fields and wrong types are refused) -----------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


SEED_MAX = 2 ** 64 - 1  # the largest seed a torch generator takes; choice i uses (seed + i) mod 2^64
MAX_TOKENS_LIMIT = 2 ** 31 - 1  # the schema's bound; the model's context bounds max_tokens further (400)
Text = Annotated[str, Field(min_length=1)]
Texts = Union[Text, Annotated[list[Text], Field(min_length=1)]]


class CompletionRequest(_Body):
    prompt: Texts = Field(description="one prompt or a non-empty list of prompts, none of them empty")
    model: Optional[str] = None
    max_tokens: int = Field(16, ge=1, le=MAX_TOKENS_LIMIT,
                            description="tokens to generate per choice; prompt + max_tokens must fit the context")
    temperature: float = Field(1.0, ge=0.0, le=2.0, allow_inf_nan=False, description="0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    n: int = Field(1, ge=1, le=16, description="choices per prompt; prompts x n must fit the server's queue")
    stop: Optional[Union[Text, Annotated[list[Text], Field(max_length=MAX_STOP_STRINGS)]]] = Field(
        None, description=f"up to {MAX_STOP_STRINGS} non-empty stop strings")
    seed: Optional[int] = Field(None, ge=0, le=SEED_MAX, description="0 to 2^64 - 1; reproducible sampling")
    stream: bool = False


class EncodeRequest(_Body):
    input: Texts = Field(description="one text or a non-empty list of texts, none of them empty; for an image, "
                                     "audio or video classifier each one a base64-encoded file; the server "
                                     "bounds the number of inputs, their total tokens and each file's bytes (413)")
    model: Optional[str] = None


class EmbeddingRequest(EncodeRequest):
    modality: Literal["text", "image"] = Field("text", description="image: each input a base64-encoded image file, "
                                                                   "embedded by a dual encoder (CLIP) into the space "
                                                                   "of its texts")


class ErrorDetail(BaseModel):
    message: str
    type: str


class ErrorBody(BaseModel):
    error: ErrorDetail


def _documented(*statuses) -> dict:
    """FastAPI `responses=` for the error statuses an endpoint can answer, all in the one error shape."""
    return {status: {"model": ErrorBody, "description": ERROR_STATUSES[status]} for status in statuses}


ERROR_STATUSES = {
    400: "the request is well-formed but cannot be served (wrong endpoint for the model, too long for its context, "
         "text the tokenizer cannot read, a file that is not base64 or not of the model's modality)",
    413: "too many inputs, tokens or bytes in one request (limits: `attnlab serve --max-inputs "
         "--max-request-tokens --max-input-bytes`)",
    422: "the body does not match the schema (unknown field, wrong type, value out of range, invalid JSON)",
    429: "the server's queue is full; retry after the Retry-After header's seconds",
    503: "the server is shutting down",
    504: "the request ran past the server's time limit",
}


# The endpoints each kind of model answers (models/base.py KINDS); the others are refused with a 400.
ENDPOINTS = {CAUSAL_LM: ("/v1/completions",), SEQ2SEQ: ("/v1/completions",),
             ENCODER: ("/v1/embeddings", "/v1/classify"), CLASSIFIER: ("/v1/classify",), GRAPH: ("/v1/classify",),
             DUAL_ENCODER: ("/v1/embeddings",)}


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


class CutOffMiddleware:
    """Past the shutdown grace, uvicorn cancels the requests still running. Each then gets a 503, or,
    when its event stream has begun, a final error event and [DONE], instead of a dropped connection.
    (A cancelled event stream may also return quietly, unfinished: it is finished here the same way;
    for a client that has gone, uvicorn drops what is sent.)"""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, ended = [], []  # the response's start message, once sent; whether its last body part was

        async def watch(message):
            if message["type"] == "http.response.start":
                started.append(message)
            elif not message.get("more_body", False):
                ended.append(True)
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except asyncio.CancelledError:
            if not started:
                return await _send_unavailable(send)
            if not _is_event_stream(started[0]):
                raise  # a JSON body half-sent: nothing valid can follow
        if started and not ended and _is_event_stream(started[0]):
            await send({"type": "http.response.body", "body": (_sse(SHUTDOWN_ERROR) + "data: [DONE]\n\n").encode()})


SHUTDOWN_MESSAGE = "the server is shutting down; retry elsewhere or later"
SHUTDOWN_ERROR = {"error": {"message": SHUTDOWN_MESSAGE, "type": "server_error"}}


def _is_event_stream(start_message) -> bool:
    return any(name == b"content-type" and value.startswith(b"text/event-stream")
               for name, value in start_message["headers"])


async def _send_unavailable(send):
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"), (b"retry-after", b"1")]})
    await send({"type": "http.response.body", "body": json.dumps(SHUTDOWN_ERROR).encode()})


KNOWN_PATHS = ("/v1/completions", "/v1/embeddings", "/v1/classify", "/health", "/metrics")


class Job:
    """One request's work on the worker thread: its batches run in turn, and the rest are skipped once
    its deadline has passed or it has been cancelled (client gone, request ended)."""

    def __init__(self, fn, batches, deadline):
        self.fn, self.batches, self.deadline = fn, batches, deadline
        self.cancelled = False

    def stopped(self) -> bool:
        return self.cancelled or time.monotonic() > self.deadline

    def __call__(self) -> Optional[list]:
        """All batches' results, or None when stopped before the last."""
        results = []
        for batch in self.batches:
            if self.stopped():
                return None
            results.extend(self.fn(batch))
        return results


class ModelRunner:
    """Requests that run whole (encoders, seq2seq decoding) run one at a time on a worker thread,
    in bounded batches, with a bounded number waiting and a time limit each."""

    def __init__(self, model, max_queue, timeout_s):
        self.model, self.max_queue, self.timeout_s = model, max_queue, timeout_s
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="attnlab-encoder")
        self.pending = 0
        self.lock = threading.Lock()

    async def run(self, fn, batches, request: Request) -> list:
        """fn(batch) -> a list of results, for each batch in turn -> all results; 504 past the time limit."""
        with self.lock:
            if self.pending >= self.max_queue:
                raise QueueFull(f"{self.pending} requests are already waiting (limit {self.max_queue})")
            self.pending += 1
        job = Job(fn, batches, time.monotonic() + self.timeout_s)
        try:
            future = asyncio.get_running_loop().run_in_executor(self.pool, job)
            while not future.done():
                await asyncio.wait({future}, timeout=DISCONNECT_POLL_S)
                if future.done():
                    break
                if time.monotonic() > job.deadline:
                    raise self.timeout_error()
                if await request.is_disconnected():
                    raise ApiError(499, "the client closed the request", "client_closed")  # nobody reads it
            results = future.result()
            if results is None:  # its deadline passed while it waited for the worker
                raise self.timeout_error()
            return results
        finally:
            job.cancelled = True  # a finished job ignores it; a running one stops at its next batch
            with self.lock:
                self.pending -= 1

    @staticmethod
    def timeout_error():
        return ApiError(504, "the request ran past the server's time limit; send fewer or shorter inputs",
                        "timeout_error")

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


@torch.no_grad()
def embed_dual(model, batch) -> list:
    """A dual encoder's unit embeddings (B, D) of a batch of images or of texts."""
    device = next(model.parameters()).device
    return model.encode({name: tensor.to(device) for name, tensor in batch.items()}).float().tolist()


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


def create_app(model, tokenizer, config: ServeConfig = None, drafter=None) -> FastAPI:
    """drafter: speculative decoding for a causal LM (inference/speculative.py's ModelDrafter or LookupDrafter)."""
    config = config or ServeConfig()
    kind = family_spec(model).kind
    causal = kind == CAUSAL_LM
    context = model.config.max_seq_len
    if drafter is not None and not causal:
        raise UserError(f"speculative decoding drafts for a causal LM; the {model.config.family} model is {KINDS[kind]}")
    engine_config = EngineConfig(config.max_batch, config.max_queue, config.timeout_s)
    if drafter is not None:
        worker = SpeculativeEngine(model, drafter, config.draft_tokens, engine_config)
    elif causal:
        worker = Engine(model, engine_config)
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
    app.add_middleware(CutOffMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: it counts the cut-off 503s too
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

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, err: StarletteHTTPException):  # unknown path, wrong method, unreadable body
        return error_response(err.status_code, f"{request.method} {request.url.path}: {err.detail}",
                              headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, err: RequestValidationError):
        return error_response(422, _validation_message(err.errors()))

    # -- endpoints ---------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        speculation = {} if drafter is None else {"speculation": {
            "draft_tokens": worker.length.k, "acceptance_rate": worker.length.stats.acceptance_rate}}
        return {"status": "ok", "model": config.model_name, "family": model.config.family,
                "kind": kind, "context": context,
                "queue_depth": worker.queue_depth, "running": worker.running, **speculation}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.registry.render(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/completions", responses=_documented(400, 422, 429, 503, 504))
    async def completions(body: CompletionRequest, request: Request):
        need("/v1/completions")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(prompts) * body.n > config.max_queue:
            raise ApiError(400, f"{len(prompts)} prompts x n={body.n} asks for more sequences than the server queues "
                                f"({config.max_queue}); split the request")
        if not causal:
            return await _translate(body, prompts, stop, request)
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
                                seed=None if body.seed is None else (body.seed + index) % (SEED_MAX + 1))
            emit = _thread_safe_put(loop, channel, index, metrics)
            sequences.append(Sequence(encoded[index // body.n], sampling, tokenizer, emit, stop, deadline))
        worker.submit(sequences)
        metrics.prompt_tokens.inc(sum(len(ids) for ids in encoded) * body.n)
        reply = Reply(body, config.model_name, sequences, channel, metrics, sum(map(len, encoded)) * body.n)
        if body.stream:
            return StreamingResponse(reply.events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return await reply.collect(request)

    @app.post("/v1/embeddings", responses=_documented(400, 413, 422, 429, 503, 504))
    async def embeddings(body: EmbeddingRequest, request: Request):
        need("/v1/embeddings")
        if body.modality == "image" and kind != DUAL_ENCODER:
            raise ApiError(400, f"modality image needs {KINDS[DUAL_ENCODER]}; the loaded {model.config.family} model "
                                "embeds texts")
        batches = _media_batches(body) if body.modality == "image" else _encoder_batches(body)
        vectors = await worker.run(functools.partial(embed_dual if kind == DUAL_ENCODER else embed, model), batches,
                                   request)
        tokens = sum(int(batch["attention_mask"].sum()) for batch in batches if "attention_mask" in batch)
        return {"object": "list", "model": config.model_name,
                "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    if kind == GRAPH:  # its /v1/classify takes a graph; registered first, it answers that path
        add_graph_routes(app, model, tokenizer, config, worker, _documented(400, 413, 422, 429, 503, 504))

    @app.post("/v1/classify", responses=_documented(400, 413, 422, 429, 503, 504))
    async def classify_texts(body: EncodeRequest, request: Request):
        need("/v1/classify")
        batches = _media_batches(body) if kind == CLASSIFIER else _encoder_batches(body)
        probabilities = await worker.run(functools.partial(classify, model), batches, request)
        names = label_names(model.config, len(probabilities[0]))
        data = []
        for i, probs in enumerate(probabilities):
            best = max(range(len(probs)), key=probs.__getitem__)
            data.append({"index": i, "label": names[best], "score": probs[best],
                         "scores": dict(zip(names, probs))})
        return {"object": "list", "model": config.model_name, "data": data}

    async def _translate(body, sources, stop, request):
        """Seq2seq completions: each prompt is a source, decoded whole on the worker thread, all rows
        in one batch (one seeded generator samples them all)."""
        sampling = Sampling(max_new_tokens=body.max_tokens, temperature=body.temperature, top_p=body.top_p,
                            seed=body.seed)
        rows = [source for source in sources for _ in range(body.n)]
        decode = functools.partial(complete_sources, model, tokenizer, sampling=sampling, stop=stop)
        results = await worker.run(decode, [rows], request)
        prompt_tokens = sum(len(tokenizer.source.encode(source)) + 1 for source in rows)
        reply = WholeReply(config.model_name, results, prompt_tokens)
        if body.stream:
            return StreamingResponse(reply.events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return reply.body()

    def _inputs(body) -> list:
        texts = [body.input] if isinstance(body.input, str) else body.input
        if len(texts) > config.max_inputs:
            raise ApiError(413, f"{len(texts)} inputs in one request, more than this server's limit of "
                                f"{config.max_inputs}; split the request")
        return texts

    def _media_batches(body) -> list:
        """Base64 files -> the processor's inputs in batches of config.encode_batch; 413 for a file
        over the byte limit, 400 for one that is not base64 or not readable by the processor."""
        items = [tokenizer.decode(_file_bytes(i, text), f"input {i}") for i, text in enumerate(_inputs(body))]
        step = config.encode_batch
        return [tokenizer(items[start:start + step]) for start in range(0, len(items), step)]

    def _file_bytes(index: int, text: str) -> bytes:
        limit = config.max_input_bytes
        if len(text) > 4 * (limit // 3 + 1):  # base64 is 4 characters per 3 bytes: over the limit undecoded
            raise ApiError(413, f"input {index} is over this server's limit of {limit} bytes per file")
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, f"input {index} is not base64; send each file base64-encoded") from None
        if len(data) > limit:
            raise ApiError(413, f"input {index} has {len(data)} bytes, over this server's limit of {limit} per file")
        return data

    def _tokenized(texts: list) -> dict:
        if kind == DUAL_ENCODER:
            return tokenizer.texts(texts, None)
        return tokenize_batch(tokenizer, texts, model.config.pad_token_id)

    def _encoder_batches(body) -> list:
        """The inputs, tokenized in batches of config.encode_batch; 413 past the request's limits."""
        texts = _inputs(body)
        batches = [_tokenized(texts[start:start + config.encode_batch])
                   for start in range(0, len(texts), config.encode_batch)]
        lengths = [length for batch in batches for length in batch["attention_mask"].sum(1).tolist()]
        for i, length in enumerate(lengths):
            if length == 0:
                raise ApiError(400, f"input {i} is empty after tokenization; send at least one token")
            if length > context:
                raise ApiError(400, f"input {i} has {length} tokens, more than the model's context of {context} "
                                    "tokens; shorten it")
        if sum(lengths) > config.max_request_tokens:
            raise ApiError(413, f"the inputs have {sum(lengths)} tokens in all, more than this server's limit of "
                                f"{config.max_request_tokens} per request; split the request")
        return batches

    add_attention_routes(app, model, tokenizer, _file_bytes, _documented(400, 413, 422))
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
            return ApiError(503, SHUTDOWN_MESSAGE, "server_error")
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


UNION_MISMATCH = ("string_type", "list_type")  # "not this member of a union": said only when nothing else is


def _validation_message(errors) -> str:
    """pydantic's errors -> one line, one complaint per field: for a field that is one text or a list
    of texts, what is wrong with the member the value was meant as."""
    by_field = {}
    for error in errors:
        by_field.setdefault(_field(error).split(".")[0], []).append(error)
    chosen = [min(found, key=lambda e: e["type"] in UNION_MISMATCH) for found in by_field.values()]
    return "; ".join(_describe(_field(error), error) for error in chosen)


def _field(error) -> str:
    """The error's field path without 'body' and without union member tags ('list[constrained-str]')."""
    parts = [str(part) for part in error["loc"] if part != "body"]
    return ".".join(part for part in parts if part.isidentifier() or part.isdigit()) or "body"


def _describe(where, error) -> str:
    """One pydantic error -> 'field: what is wrong'."""
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown field; remove it"
    if error["type"] == "json_invalid":
        return "the request body is not valid JSON"
    if error["type"] == "missing":
        return f"{where}: required field is missing"
    return f"{where}: {error['msg']}"
