"""Text-generation metrics through the standard libraries: BLEU and chrF (sacrebleu),
ROUGE-1/2/L F1 (rouge-score), and exact match."""


def text_metrics(hypotheses: list, references: list) -> dict:
    import sacrebleu
    from rouge_score import rouge_scorer

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
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
