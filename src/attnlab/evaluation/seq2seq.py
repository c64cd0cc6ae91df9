"""Text-generation metrics through the standard libraries: BLEU and chrF (sacrebleu),
ROUGE-1/2/L F1 (rouge-score, on Unicode words), and exact match."""

import unicodedata


class UnicodeWords:
    """rouge-score's tokenizer for any script: lowercase, then runs of letters, digits and
    combining marks. On ASCII text it gives exactly rouge-score's default tokens (no stemming);
    the default keeps only [a-z0-9], so Cyrillic or Greek scored 0 and "über" lost its ü.
    Combining marks stay in their word (Devanagari vowel signs), and NFC joins "u" + U+0308 to "ü".
    Scripts written without spaces (Chinese, Japanese, Thai) come out as one token per run."""

    def tokenize(self, text: str) -> list:
        text = unicodedata.normalize("NFC", text.lower())
        return "".join(ch if _in_word(ch) else " " for ch in text).split()


def _in_word(ch: str) -> bool:
    return ch.isalnum() or unicodedata.category(ch).startswith("M")  # "_" is out, as in rouge-score


def text_metrics(hypotheses: list, references: list) -> dict:
    import sacrebleu
    from rouge_score import rouge_scorer

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=UnicodeWords())
    rouge = {name: 0.0 for name in ("rouge1", "rouge2", "rougeL")}
    for hypothesis, reference in zip(hypotheses, references):
        for name, score in scorer.score(reference, hypothesis).items():
            rouge[name] += score.fmeasure / len(references)
    return {
        "pairs": len(references),
        "exact_match": sum(h == r for h, r in zip(hypotheses, references)) / len(references),
        "bleu": sacrebleu.corpus_bleu(hypotheses, [references]).score,
        "chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score,
        **{name: 100 * value for name, value in rouge.items()},
    }
