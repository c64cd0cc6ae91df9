"""`attnlab <verb>`: the command line. User errors print one line and exit with code 2."""

import argparse
import importlib
import os
import pkgutil
import sys

from . import commands, progress
from .errors import UserError


def verb_modules() -> list:
    """Every module of attnlab.commands but common: one verb each, added by its register(subparsers)."""
    names = sorted(m.name for m in pkgutil.iter_modules(commands.__path__) if m.name != "common")
    return [importlib.import_module(f"attnlab.commands.{name}") for name in names]


THREADS_HELP = ("CPU threads for the model (default: OMP_NUM_THREADS if set, else one per core); on a machine "
                "other jobs share, 1 is often fastest")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnlab", description="Transformers from shared layers: "
                                     "train, generate, evaluate, convert, compress and serve.")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for module in verb_modules():
        module.register(sub)
    for verb_parser in sub.choices.values():
        verb_parser.add_argument("--threads", type=int, help=THREADS_HELP)
        verb_parser.add_argument("--quiet", action="store_true",
                                 help="no progress bars or progress lines (off a terminal they are plain lines)")
    return parser


def use_threads(threads):
    """--threads for every verb: torch's intra-op threads (torch itself reads OMP_NUM_THREADS)."""
    if threads is None:
        return
    if threads < 1:
        raise UserError(f"--threads must be a positive integer, got {threads}")
    import torch

    torch.set_num_threads(threads)


def main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides may also come after options: train --data x model.n_layer=2
        if not hasattr(args, "overrides") or any("=" not in e or e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides += extra
    try:
        use_threads(args.threads)
        with progress.silenced(args.quiet):
            status = args.run(args)  # None, or the exit code a verb reports (doctor: 1 when it finds something)
    except UserError as err:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank fails alike; rank 0 says so once
            print(f"attnlab {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
