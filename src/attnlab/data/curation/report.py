"""report.json and report.md: what each stage removed (documents, rules, characters trimmed),
with examples."""

import json
from collections import Counter
from pathlib import Path

from .config import Pipeline
from .stages import shard_name


def stage_table(work: Path, shards: int, docs: int, pipeline: Pipeline, near: dict | None) -> list[dict]:
    removed, examples, chars = [], {}, Counter()
    for i in range(shards):
        part = json.loads((work / "filter" / f"{shard_name(i)}.json").read_text())
        removed += part["removed"]
        chars.update(part["chars_removed"])
        for stage, found in part["examples"].items():
            examples.setdefault(stage, []).extend(found)
    by_stage = {}
    for _, stage, rule in removed:
        by_stage.setdefault(stage, Counter())[rule] += 1
    if near is not None:
        by_stage["minhash"] = Counter({"near_duplicate": near["removed"]})
        examples["minhash"] = near["examples"]
    rows, left = [], docs
    for stage in pipeline.stages:
        rules = by_stage.get(stage, Counter())
        gone = sum(rules.values())
        rows.append({"stage": stage, "docs_in": left, "removed": gone, "chars_trimmed": chars.get(stage, 0),
                     "rules": dict(rules.most_common()), "examples": examples.get(stage, [])[:3]})
        left -= gone
    return rows


def write_report(out: Path, work: Path, shards: int, docs: int, kept: int, pipeline: Pipeline,
                 near: dict | None) -> dict:
    report = {"pipeline": pipeline.describe(), "settings": pipeline.as_dict(), "docs_in": docs, "docs_out": kept,
              "stages": stage_table(work, shards, docs, pipeline, near), "near_duplicates": near}
    (out / "report.md").write_text(markdown(report))
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report


def markdown(report: dict) -> str:
    lines = ["# Curation report", "", f"Pipeline: {report['pipeline']}", "",
             f"{report['docs_in']} documents in, {report['docs_out']} out.", "",
             "| stage | documents in | removed | characters trimmed | rules |", "| --- | --- | --- | --- | --- |"]
    for row in report["stages"]:
        rules = ", ".join(f"{rule} {n}" for rule, n in row["rules"].items()) or "-"
        lines.append(f"| {row['stage']} | {row['docs_in']} | {row['removed']} | {row['chars_trimmed']} | {rules} |")
    near = report["near_duplicates"]
    if near:
        summary = (f"Near-duplicates: {near['candidate_pairs']} LSH candidate pairs, {near['verified_pairs']} "
                   f"verified, {near['rejected_pairs']} rejected by true Jaccard; {near['clusters']} clusters.")
        lines += ["", summary]
    for row in report["stages"]:
        if row["examples"]:
            lines += ["", f"## {row['stage']}: examples", ""]
            lines += [f"- {json.dumps(example, ensure_ascii=False)}" for example in row["examples"]]
    return "\n".join(lines) + "\n"
