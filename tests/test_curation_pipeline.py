"""`attnlab curate` end to end: exact duplicates of the Debian set, near-duplicates against brute
force, the same output for any number of workers and on a Dask local cluster, resume after a
failure, the output directory's safety, and `attnlab train --data` reading the result."""

import gzip
import hashlib
import json
from pathlib import Path

import pytest

from attnlab.cli import main
from attnlab.data.corpus import read_text
from attnlab.data.curation import curate, jaccard, make_engine, parse_pipeline, shingle_hashes
from attnlab.data.curation import pipeline as curation_pipeline
from attnlab.data.curation.synthetic import near_duplicate_corpus
from attnlab.errors import UserError

from .test_cli import TINY
from .test_safe_outputs import refused, snapshot

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEBIAN = SHARED / "curation" / "debian_licenses.jsonl.gz"
FULL = "exact,lines,langid,gopher,c4,blocklist,minhash"


def output_records(out: Path) -> list[dict]:
    manifest = json.loads((out / "corpus.json").read_text())
    return [json.loads(line) for name in manifest["files"] for line in (out / name).read_text().splitlines()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """About 1 kB documents: 24 passages with copies edited 0.5 %, 3 %, 10 % and 40 %, an exact copy
    (case and spacing changed), boilerplate lines and documents each filter removes; gzipped JSONL."""
    docs = near_duplicate_corpus((SHARED / "tinyshakespeare.txt").read_text(), 24, (0.005, 0.03, 0.1, 0.4), seed=1)
    for i, doc in enumerate(docs):
        doc["text"] += "." if i > 2 else "\nSubscribe to our newsletter for the latest news about everything."
    docs.append({"id": "copy", "text": "  " + docs[0]["text"].upper().replace(" ", "\n ")})
    docs.append({"id": "short", "text": "Too short to keep."})
    docs.append({"id": "french", "text": " ".join(["Le renard brun saute par-dessus le chien paresseux et la "
                                                   "fermière regarde depuis la maison avec son fils."] * 8)})
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(d) + "\n" for d in docs)
    return path


def run_curate(source, out, spec=FULL, workers=1, engine="processes", shard_docs=7, overrides=()):
    pipeline = parse_pipeline(spec, list(overrides), shard_docs=shard_docs)
    runner = make_engine(engine, workers)
    try:
        return curate(source, out, pipeline, runner, log=lambda _: None)
    finally:
        runner.close()


@pytest.fixture(scope="module")
def serial(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("serial") / "out"
    return out, run_curate(corpus, out)


def test_exact_dedup_finds_every_md5_group_of_the_debian_set_and_nothing_else(tmp_path):
    docs = [json.loads(line) for line in gzip.open(DEBIAN, "rt", encoding="utf-8")]
    first = {}
    for doc in docs:
        first.setdefault(hashlib.md5(doc["text"].encode()).hexdigest(), doc["id"])
    result = run_curate(DEBIAN, tmp_path / "out", spec="exact", shard_docs=100)
    kept = [r["id"] for r in output_records(tmp_path / "out")]
    assert sorted(kept) == sorted(first.values()) and len(kept) == len(set(kept))
    assert result.report["stages"][0]["removed"] == len(docs) - len(first)


def test_near_duplicates_match_brute_force(corpus, tmp_path):
    threshold = 0.8
    result = run_curate(corpus, tmp_path / "out", spec="minhash", overrides=[f"minhash.threshold={threshold}"])
    survivors = {r["id"] for r in output_records(tmp_path / "out")}
    docs = [json.loads(line) for line in gzip.open(corpus, "rt", encoding="utf-8")]
    shingles = {d["id"]: shingle_hashes(d["text"], 5) for d in docs}
    ids = sorted(shingles)
    similar = [(a, b, jaccard(shingles[a], shingles[b])) for i, a in enumerate(ids) for b in ids[i + 1:]]
    assert any(j >= 0.9 for _, _, j in similar) and any(0.3 < j < threshold for _, _, j in similar)
    # recall: LSH misses a pair this similar once in a thousand, and verification keeps it
    assert all(not (a in survivors and b in survivors) for a, b, j in similar if j >= 0.9)
    # precision: every document removed is at least that similar to another one
    removed = set(ids) - survivors
    assert len(removed) == result.report["stages"][0]["removed"] > 0
    for doc in removed:
        assert max(j for a, b, j in similar if doc in (a, b)) >= threshold


def test_each_stage_reports_what_it_removed(corpus, serial):
    out, result = serial
    texts = [json.loads(line)["text"] for line in gzip.open(corpus, "rt", encoding="utf-8")]
    distinct = {" ".join(t.lower().split()) for t in texts}  # the texts are ASCII: no Unicode forms to fold
    stages = {row["stage"]: row for row in result.report["stages"]}
    assert stages["exact"]["removed"] == len(texts) - len(distinct) > 0
    assert stages["lines"]["chars_trimmed"] > 0  # lines shared by documents stay only in the first one
    assert sum("Subscribe to our newsletter" in r["text"] for r in output_records(out)) == 1
    assert stages["langid"]["rules"]["language_fr"] == 1 and "too_few_words" in stages["gopher"]["rules"]
    assert sum(row["removed"] for row in result.report["stages"]) == result.docs_in - result.docs_out
    assert all(sum(row["rules"].values()) == row["removed"] for row in result.report["stages"])
    assert "minhash(5-gram shingles, 112 permutations, 14 bands x 8 rows: LSH threshold ~0.719" in \
        (out / "report.md").read_text()
    assert json.loads((out / "report.json").read_text())["docs_out"] == result.docs_out


def test_the_output_does_not_depend_on_the_number_of_workers(corpus, serial, tmp_path):
    two = run_curate(corpus, tmp_path / "two", workers=2)
    assert output_records(tmp_path / "two") == output_records(serial[0])
    assert two.report == serial[1].report


def test_a_dask_local_cluster_gives_the_local_output(corpus, serial, tmp_path):
    pytest.importorskip("distributed")
    result = run_curate(corpus, tmp_path / "dask", workers=3, engine="dask")
    assert output_records(tmp_path / "dask") == output_records(serial[0])
    assert result.report == serial[1].report


def test_a_rerun_continues_from_the_shards_already_done(corpus, serial, tmp_path, monkeypatch):
    real, calls = curation_pipeline.filter_shard, []

    def failing(task):
        if task.index == 3:
            raise RuntimeError("killed")
        return real(task)

    def recording(task):
        calls.append((task.index, (Path(task.work) / "filter" / f"{task.index:05d}.json").exists()))
        return real(task)

    monkeypatch.setattr(curation_pipeline, "filter_shard", failing)
    with pytest.raises(RuntimeError):
        run_curate(corpus, tmp_path / "out")
    monkeypatch.setattr(curation_pipeline, "filter_shard", recording)
    run_curate(corpus, tmp_path / "out")
    assert [done for index, done in calls if index < 3] == [True] * 3
    assert not any(done for index, done in calls if index >= 3)
    assert output_records(tmp_path / "out") == output_records(serial[0])


def test_the_verb_refuses_another_pipeline_or_a_foreign_directory_in_one_line(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["curate", str(corpus), "--out", str(out), "--pipeline", "exact,minhash", "--workers", "1"]
    assert main(argv) == 0
    before = snapshot(out)
    refused(capsys, [*argv[:-4], "--pipeline", "exact", "--workers", "1"], "different pipeline", "--force")
    refused(capsys, [*argv, "minhash.bands=7"], "different pipeline")
    assert snapshot(out) == before
    assert main(argv) == 0 and "nothing to do" in capsys.readouterr().err
    assert main([*argv[:-4], "--pipeline", "exact", "--workers", "1", "--force"]) == 0
    assert json.loads((out / "report.json").read_text())["settings"]["stages"] == ["exact"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    refused(capsys, ["curate", str(corpus), "--out", str(mine)], "not empty")
    refused(capsys, ["curate", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o2")], "does not exist")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"body": "no text"}\n')
    refused(capsys, ["curate", str(bad), "--out", str(tmp_path / "o3"), "--workers", "1"], "line 2", "--text-field")
    assert not (tmp_path / "o3").exists()  # what a refused run created is gone


def test_train_reads_the_curated_output_directly(serial, tmp_path):
    out, _ = serial
    text = read_text(out)
    assert text == "\n".join(r["text"] for r in output_records(out)) and "Curation report" not in text
    assert main(["train", "--data", str(out), "--out", str(tmp_path / "run"), *TINY, "train.max_steps=2",
                 "train.eval_interval=2"]) == 0


def test_the_corpus_reader_takes_jsonl_gzip_and_a_manifest(corpus, tmp_path):
    docs = [json.loads(line) for line in gzip.open(corpus, "rt", encoding="utf-8")]
    assert read_text(corpus) == "\n".join(d["text"] for d in docs)
    (tmp_path / "corpus.json").write_text('{"files": "not a list of files"')
    with pytest.raises(UserError, match="not a corpus manifest"):
        read_text(tmp_path)


@pytest.mark.parametrize("min_docs, copies_left", [(3, 1), (4, 3)])
def test_boilerplate_paragraphs_stay_only_in_the_first_document(tmp_path, min_docs, copies_left):
    shared = "Subscribe to our newsletter,\nand never miss a story again!"
    docs = [f"Story {i} begins here and is long enough to count.\n\n{shared}\n\nStory {i} ends." for i in range(3)]
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(docs)))
    run_curate(source, tmp_path / "out", spec="lines", shard_docs=2,
               overrides=["lines.unit=paragraph", f"lines.min_docs={min_docs}"])
    kept = output_records(tmp_path / "out")
    assert [r["id"] for r in kept] == ["d0", "d1", "d2"]
    assert sum(shared in r["text"] for r in kept) == copies_left and shared in kept[0]["text"]
    assert all(f"Story {i} ends." in r["text"] for i, r in enumerate(kept))
