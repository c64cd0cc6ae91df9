"""`attnlab <verb>`: the command line. User errors print one line and exit with code 2."""

import argparse
import importlib
import sys

from .errors import UserError

VERB_MODULES = ["lm", "encoders", "finetune", "serve", "demo"]  # modules in attnlab.commands, each with register(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnlab", description="Transformers from shared layers: "
                                     "train, generate, evaluate, convert, compress and serve.")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name in VERB_MODULES:
        importlib.import_module(f"attnlab.commands.{name}").register(sub)
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
        print(f"attnlab {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
