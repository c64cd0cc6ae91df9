"""Language identification with the naive Bayes model that ships inside the py3langid wheel
(offline, about 1 ms a document)."""

from dataclasses import dataclass

from ...errors import UserError
from .filters import Verdict

_MODEL = None


@dataclass
class LangIdSettings:
    languages: str = "en"  # comma-separated ISO 639-1 codes to keep
    min_score: float = 0.65  # normalised probability of the best language
    max_chars: int = 10_000  # classify this many characters from the start


def _identifier():
    global _MODEL
    if _MODEL is None:
        try:
            from py3langid.langid import MODEL_FILE, LanguageIdentifier
        except ImportError:
            raise UserError("the langid stage needs py3langid: pip install 'attnlab[curate]'") from None
        _MODEL = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return _MODEL


class LangIdFilter:
    def __init__(self, settings: LangIdSettings):
        self.keep = {code.strip() for code in settings.languages.split(",") if code.strip()}
        unknown = self.keep - set(_identifier().labels)
        if unknown:
            raise UserError(f"langid.languages names unknown language code(s) {', '.join(sorted(unknown))}")
        self.s = settings

    def identify(self, text: str) -> tuple[str, float]:
        lang, score = _identifier().classify(text[:self.s.max_chars])
        return lang, float(score)

    def __call__(self, text: str) -> Verdict:
        lang, score = self.identify(text)
        if lang not in self.keep:
            return text, f"language_{lang}"
        return text, "low_language_score" if score < self.s.min_score else None
