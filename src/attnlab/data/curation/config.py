"""A curation pipeline: which stages run, in which order, with which settings."""

import dataclasses
import json
from dataclasses import dataclass, field

import yaml

from ...errors import UserError
from .blocklist import BlocklistSettings
from .filters import C4Settings, GopherSettings
from .langid import LangIdSettings
from .minhash import lsh_threshold


@dataclass
class ExactSettings:
    pass  # documents equal after normalisation (case, Unicode forms, whitespace): the first one stays


@dataclass
class LinesSettings:
    unit: str = "line"  # or "paragraph" (blank-line separated)
    min_chars: int = 30  # shorter lines/paragraphs are never counted as boilerplate
    min_docs: int = 2  # one found in this many documents stays only in the first


@dataclass
class MinHashSettings:
    ngram: int = 5  # words per shingle
    num_perm: int = 112
    bands: int = 14
    rows: int = 8
    threshold: float = 0.8  # true Jaccard a candidate pair must reach to be a near-duplicate
    seed: int = 1


SETTINGS = {"exact": ExactSettings, "lines": LinesSettings, "gopher": GopherSettings, "c4": C4Settings,
             "langid": LangIdSettings, "blocklist": BlocklistSettings, "minhash": MinHashSettings}
FILTERS = ("gopher", "c4", "langid", "blocklist")
# exact and lines first, then the filters in the order given, near-duplicates last
PHASE = {"exact": 0, "lines": 1, **{name: 2 for name in FILTERS}, "minhash": 3}
DEFAULT_PIPELINE = "exact,lines,gopher,c4,langid,blocklist,minhash"


@dataclass
class Pipeline:
    stages: list[str]
    settings: dict = field(default_factory=dict)  # stage -> its settings dataclass
    shard_docs: int = 1000
    text_field: str = "text"

    def as_dict(self) -> dict:
        return {"stages": self.stages, "shard_docs": self.shard_docs, "text_field": self.text_field,
                "settings": {name: dataclasses.asdict(self.settings[name]) for name in self.stages}}

    def fingerprint(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)

    def describe(self) -> str:
        """One line a person can check, with the LSH threshold the bands and rows imply."""
        parts = []
        for name in self.stages:
            if name == "minhash":
                m = self.settings[name]
                parts.append(f"minhash({m.ngram}-gram shingles, {m.num_perm} permutations, {m.bands} bands x "
                             f"{m.rows} rows: LSH threshold ~{lsh_threshold(m.bands, m.rows):.3f}, "
                             f"verified at Jaccard >= {m.threshold})")
            else:
                parts.append(name)
        return " -> ".join(parts)


def parse_pipeline(spec: str, overrides: list[str] = (), shard_docs: int = 1000, text_field: str = "text") -> Pipeline:
    """`spec` like "exact,gopher,minhash"; `overrides` like ["minhash.bands=20", "gopher.min_words=20"]."""
    stages = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [s for s in stages if s not in SETTINGS]
    if not stages or unknown:
        raise UserError(f"unknown pipeline stage {', '.join(unknown) or '(none given)'}; known: {', '.join(SETTINGS)}")
    if len(set(stages)) != len(stages):
        raise UserError(f"pipeline {spec!r} names a stage twice")
    if [PHASE[s] for s in stages] != sorted(PHASE[s] for s in stages):
        raise UserError(f"pipeline {spec!r} is out of order: exact, then lines, then the filters "
                        f"({', '.join(FILTERS)}) in any order, then minhash")
    if shard_docs < 1:
        raise UserError("--shard-docs must be at least 1")
    settings = {name: SETTINGS[name]() for name in stages}
    for item in overrides:
        apply_setting(settings, item)
    check(settings)
    return Pipeline(stages, settings, shard_docs, text_field)


def apply_setting(settings: dict, item: str):
    key, sep, raw = item.partition("=")
    stage, _, name = key.partition(".")
    if not sep or not name:
        raise UserError(f"setting {item!r} must look like stage.key=value, e.g. minhash.bands=20")
    if stage not in settings:
        raise UserError(f"setting {item!r} is for stage {stage!r}, which is not in the pipeline ({', '.join(settings)})")
    fields = {f.name: f for f in dataclasses.fields(settings[stage])}
    if name not in fields:
        raise UserError(f"{stage} has no setting {name!r}; known: {', '.join(fields) or 'none'}")
    kind = type(getattr(settings[stage], name))
    try:
        value = yaml.safe_load(raw) if kind is not str else raw
    except yaml.YAMLError:
        value = raw
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not kind:
        raise UserError(f"setting {item!r}: {stage}.{name} must be {kind.__name__}")
    setattr(settings[stage], name, value)


def check(settings: dict):
    m = settings.get("minhash")
    if m is not None:
        if min(m.ngram, m.num_perm, m.bands, m.rows) < 1:
            raise UserError("minhash.ngram, num_perm, bands and rows must be at least 1")
        if m.bands * m.rows > m.num_perm:
            raise UserError(f"minhash.bands x minhash.rows ({m.bands} x {m.rows}) exceeds num_perm ({m.num_perm})")
        if not 0 < m.threshold <= 1:
            raise UserError("minhash.threshold must be in (0, 1]")
    lines = settings.get("lines")
    if lines is not None and lines.unit not in ("line", "paragraph"):
        raise UserError(f"lines.unit must be line or paragraph, not {lines.unit!r}")
