"""Config base classes: validated dataclasses that round-trip through JSON.

Each model family defines its config beside its model (models/<family>.py) by subclassing
`ModelConfig`, which is saved as config.json next to the weights; the trainer's settings
subclass `Config`. `validate()` raises one `UserError` that names the field and the fix.
"""

import dataclasses
import json
from pathlib import Path
from typing import ClassVar

from .errors import UserError


_SCALARS = {"bool": bool, "int": int, "float": float, "str": str}
_ARTICLES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


@dataclasses.dataclass
class Config:
    section: ClassVar[str] = "config"  # names this config in error messages

    def __post_init__(self):
        for field in dataclasses.fields(self):
            setattr(self, field.name, self._checked_type(field, getattr(self, field.name)))
        self.validate()

    def _checked_type(self, field, value):
        """A value of the field's declared scalar type (bool, int, float, str; None allowed).
        A float field also takes an int, and numeric text: YAML 1.1 reads 3e-4 as a string."""
        kind = _SCALARS.get(field.type if isinstance(field.type, str) else getattr(field.type, "__name__", None))
        if value is None or kind is None:
            return value
        if kind is float and not isinstance(value, bool):
            if isinstance(value, int):
                return float(value)
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
        if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
            return value
        raise self.invalid(f"{field.name} must be {_ARTICLES[kind]}, got {value!r}")

    def validate(self):
        """Subclasses check their fields here with the helpers below."""

    # -- validation helpers -------------------------------------------------------------
    def invalid(self, message) -> UserError:
        return UserError(f"{self.section} config: {message}")

    def require_positive(self, *names):
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise self.invalid(f"{name} must be a positive integer, got {value!r}")

    def require_choice(self, name, choices):
        value = getattr(self, name)
        if value not in choices:
            raise self.invalid(f"{name}={value!r} is not one of {', '.join(map(str, choices))}")

    def require_fraction(self, *names):
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise self.invalid(f"{name} must be in [0, 1), got {value!r}")

    def require_index_names(self, name, count: int):
        """`name` is None or maps "0" .. str(count - 1) (JSON keys are strings) to distinct names."""
        value = getattr(self, name)
        if value is None:
            return
        if not isinstance(value, dict) or set(value) != {str(i) for i in range(count)}:
            raise self.invalid(f"{name} must map the {count} indices \"0\"..\"{count - 1}\" to names, got {value!r}")
        names = list(value.values())
        if not all(isinstance(n, str) and n for n in names) or len(set(names)) != count:
            raise self.invalid(f"{name} must give {count} distinct non-empty string names, got {names!r}")

    def require_divisible(self, name, by_name):
        value, by = getattr(self, name), getattr(self, by_name)
        if value % by:
            raise self.invalid(f"{name} ({value}) must be divisible by {by_name} ({by})")

    # -- (de)serialisation --------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"{cls.section} config: unknown field(s) {', '.join(unknown)}; "
                            f"known fields are {', '.join(sorted(known))}")
        return cls(**values)

    def replace(self, **changes):
        return self.from_dict({**self.to_dict(), **changes})

    def save(self, path: Path):
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


@dataclasses.dataclass
class ModelConfig(Config):
    """A model family's config; config.json records the family so the right model is built.

    Every family names the same idea the same way:
    - `max_seq_len`: the usable context, the longest input (a seq2seq model's source) in tokens.
      A field where it is a free choice (GPT, Transformer-XL, Reformer, T5, whose target side
      has `max_target_len`); a read-only property derived from `max_positions` where the model
      has a learned or fixed position table (BERT, Longformer, BigBird, the original
      Transformer). `max_positions` is the table's row count, a different idea: RoBERTa and
      Longformer count positions from pad_token_id + 1, so they use fewer rows than they have.
    - `ffn_hidden` (feed-forward width), `head_dim` (size of one attention head), `tie_weights`
      (the output projection is the embedding table), `dropout`, `attn_dropout` (absent where
      the family has none), `attn_backend`, `n_layer`.
    `aliases` maps a field's earlier name to its current one, so that config.json files, run
    configs and `model.key=value` overrides written with the old name still load.
    """

    family: ClassVar[str] = ""
    aliases: ClassVar[dict] = {}  # old field name -> current field name

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.section = cls.family

    def to_dict(self) -> dict:
        return {"family": self.family, **super().to_dict()}

    @classmethod
    def renamed(cls, values: dict) -> dict:
        """`values` with each old field name (see `aliases`) replaced by the current one."""
        values = dict(values)
        for old, new in cls.aliases.items():
            if old in values:
                if new in values:
                    raise UserError(f"{cls.section} config: {old} is the old name of {new}; give only {new}")
                values[new] = values.pop(old)
        return values

    @classmethod
    def from_dict(cls, values: dict):
        return super().from_dict(cls.renamed({k: v for k, v in values.items() if k != "family"}))

    def replace(self, **changes):
        return super().replace(**self.renamed(changes))

    def with_depth(self, kept: list):
        """The config of a shallower model made of this one's layers `kept` (indices, in order),
        as a distillation student is. Families whose depth is more than `n_layer` override this."""
        return self.replace(n_layer=len(kept))
