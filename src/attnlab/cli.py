"""`attnlab <verb>`: the command line. User errors print one line and exit with code 2."""

import argparse
import importlib
import os
import pkgutil
import sys

from . import commands
from .errors import UserError


def verb_modules() -> list:
    """Every module of attnlab.commands but common: one verb each, added by its register(subparsers)."""
    names = sorted(m.name for m in pkgutil.iter_modules(commands.__path__) if m.name != "common")
    return [importlib.import_module(f"attnlab.commands.{name}") for name in names]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnlab", description="Transformers from shared layers: "
                                     "train, generate, evaluate, convert, compress and serve.")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for module in verb_modules():
        module.register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides may also come after options: train --data x model.n_layer=2
        if not hasattr(args, "overrides") or any("=" not in e or e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides += extra
    try:
        args.run(args)
    except UserError as err:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank fails alike; rank 0 says so once
            print(f"attnlab {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
