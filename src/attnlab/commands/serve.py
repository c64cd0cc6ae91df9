"""serve: an HTTP server (FastAPI + uvicorn) with OpenAI-shaped endpoints for a checkpoint."""

import socket
import sys

from ..checkpoint import load_checkpoint
from ..errors import UserError
from .common import resolve_checkpoint
from .generate import draft_tokens, drafter_for, speculation_arguments


def register(sub):
    p = sub.add_parser("serve", help="serve a checkpoint over HTTP: /v1/completions (causal LMs), "
                                     "/v1/embeddings and /v1/classify (encoders), /v1/classify (image, audio and video "
                                     "classifiers), /health, /metrics")
    p.add_argument("checkpoint", help="checkpoint directory or run directory")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=16, help="sequences decoded together (1 = one at a time)")
    p.add_argument("--max-queue", type=int, default=64, help="sequences allowed to wait; more get HTTP 429")
    p.add_argument("--max-inputs", type=int, default=256,
                   help="inputs per /v1/embeddings or /v1/classify request; more get HTTP 413")
    p.add_argument("--max-request-tokens", type=int, default=32768,
                   help="tokens per encoder request, all inputs together; more get HTTP 413")
    p.add_argument("--max-input-bytes", type=int, default=8 * 2 ** 20,
                   help="bytes per file sent to an image, audio or video classifier; more get HTTP 413")
    p.add_argument("--encode-batch", type=int, default=32,
                   help="inputs the encoder runs at once (a request's time limit is checked between batches)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request, queueing included")
    p.add_argument("--grace", type=float, default=10.0, help="seconds in-flight requests get to finish on shutdown")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--name", help="model name reported in responses (default: the checkpoint path)")
    speculation_arguments(p)
    p.set_defaults(run=serve)


def serve(args):
    import uvicorn

    app = server_app(args)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=args.grace)


def check_bindable(host: str, port: int):
    """One line, before any loading, when the server could not listen on host:port."""
    if port > 65535:
        raise UserError(f"--port must be at most 65535, got {port}")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no obstacle
            probe.bind((host, port))
    except OSError as err:
        raise UserError(f"cannot listen on {host}:{port}: {err.strerror or err}; choose another --port or --host") from None


def server_app(args):
    """The checks and the loading `serve` does before it listens -> the app (also for tests)."""
    import torch

    from ..serving.app import ServeConfig, create_app

    for name in ("max_batch", "max_queue", "max_inputs", "max_request_tokens", "max_input_bytes", "encode_batch",
                 "port"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.timeout <= 0 or args.grace < 0:
        raise UserError("--timeout must be > 0 and --grace >= 0")
    k = draft_tokens(args.draft_tokens)
    check_bindable(args.host, args.port)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    path = resolve_checkpoint(args.checkpoint)
    model, processor = load_checkpoint(path, device=device)
    if processor is None:
        raise UserError(f"{path} has no saved processor (tokenizer.json, or processor.json for an image, audio or "
                        "video classifier); the server needs it to read inputs")
    config = ServeConfig(max_batch=args.max_batch, max_queue=args.max_queue, timeout_s=args.timeout,
                         model_name=args.name or str(args.checkpoint), max_inputs=args.max_inputs,
                         max_request_tokens=args.max_request_tokens, encode_batch=args.encode_batch,
                         max_input_bytes=args.max_input_bytes, draft_tokens=k)
    drafter = drafter_for(args, model, "serve")
    app = create_app(model, processor, config, drafter)
    print(f"serving {model.config.family} model from {path} on http://{args.host}:{args.port} ({device})",
          file=sys.stderr)
    return app
