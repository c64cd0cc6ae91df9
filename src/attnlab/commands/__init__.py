"""Command-line verbs, one module per verb (common.py holds what they share); each module has
`register(subparsers)`, and a verb that takes a checkpoint asks its family's spec what kind it is
(common.for_kind) and runs the path for that kind or refuses in one line."""
