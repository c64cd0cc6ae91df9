"""Command-line verbs, one module per group; each module has `register(subparsers)`."""
