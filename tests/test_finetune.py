"""Classification fine-tuning, `attnlab finetune / classify / compress`, and their bad inputs."""

import json

import pytest
import torch

from attnlab.checkpoint import load_checkpoint, save_checkpoint
from attnlab.cli import main
from attnlab.data.classification import ClassificationData, LabelSet, read_labelled, stratified_split
from attnlab.errors import UserError
from attnlab.evaluation import classification_metrics
from attnlab.interop import minilm_path
from attnlab.models.base import build_model
from attnlab.models.bert import BertConfig
from attnlab.tokenizers import load_hf_tokenizer

GOOD = ["a great film", "wonderful acting", "i loved it", "superb and moving", "a delight"]
BAD = ["a dull mess", "boring and long", "i hated it", "terrible script", "a waste of time"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny BERT with the real WordPiece tokenizer, saved as a checkpoint."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("base") / "tiny-bert"
    model = build_model(BertConfig(n_layer=2, n_head=2, d_model=32, ffn_hidden=64, max_positions=64, dropout=0.0,
                                   attn_dropout=0.0))
    save_checkpoint(path, model, load_hf_tokenizer(minilm_path()))
    return path


def write_tsv(path, n=40):
    rows = ["sentence\tlabel"] + [f"{(GOOD if i % 2 else BAD)[i % 5]} {i}\t{'pos' if i % 2 else 'neg'}"
                                   for i in range(n)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_tsv_csv_and_jsonl_read_the_same(tmp_path):
    (tmp_path / "a.csv").write_text('text,label\n"good, really",1\nbad,0\n')
    (tmp_path / "a.jsonl").write_text('{"text": "good, really", "label": 1}\n\n{"text": "bad", "label": 0}\n')
    (tmp_path / "a.tsv").write_text('text\tlabel\ngood, really\t1\nbad\t0\n')
    for name in ("a.csv", "a.jsonl", "a.tsv"):
        assert read_labelled(tmp_path / name) == (["good, really", "bad"], ["1", "0"])



def test_a_file_without_a_header_row_is_recognised_and_read_by_position(tmp_path):
    (tmp_path / "sst.tsv").write_text("a great film\t1\na dull mess\t0\ni loved it\t1\n")  # text, label
    (tmp_path / "news.csv").write_text('3,"Stocks up",Markets rallied.\n1,Rain,"Wet, cold."\n')  # label, title, text
    for name in ("sst.tsv", "news.csv"):
        with pytest.raises(UserError, match=f"{name} seems to have no header row.*--no-header"):
            read_labelled(tmp_path / name)
    assert read_labelled(tmp_path / "sst.tsv", header=False) == (["a great film", "a dull mess", "i loved it"],
                                                                 ["1", "0", "1"])
    assert read_labelled(tmp_path / "news.csv", "3", "1", header=False) == (["Markets rallied.", "Wet, cold."],
                                                                            ["3", "1"])
    with pytest.raises(UserError, match="--text-column must be a column position"):
        read_labelled(tmp_path / "sst.tsv", "text", header=False)
    (tmp_path / "named.tsv").write_text("review\tscore\nfine\t5\n")  # a header that names other columns
    with pytest.raises(UserError, match="no text column .*review, score.*--text-column"):
        read_labelled(tmp_path / "named.tsv")


def test_finetune_and_classify_read_headerless_files_with_no_header(base, tmp_path, capsys):
    data = tmp_path / "train.tsv"
    data.write_text("".join(line + "\n" for line in write_tsv(tmp_path / "h.tsv", n=20).read_text().splitlines()[1:]))
    out = tmp_path / "clf"
    assert main(["finetune", "--base", str(base), "--train", str(data), "--out", str(out), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "no header row" in err and len(err.strip().splitlines()) == 1 and not out.exists()
    assert main(["finetune", "--base", str(base), "--train", str(data), "--out", str(out), "--epochs", "1",
                 "--max-length", "16", "--no-header"]) == 0
    capsys.readouterr()
    assert main(["classify", str(out), "--input", str(data), "--no-header"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 20 and "accuracy" in captured.err

def test_bad_data_files_get_clear_errors(tmp_path):
    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(UserError, match="no examples"):
        read_labelled(tmp_path / "empty.tsv")
    (tmp_path / "nolabel.tsv").write_text("sentence\tstars\nnice\t5\n")
    with pytest.raises(UserError, match="no label column 'label'.*sentence, stars.*--label-column"):
        read_labelled(tmp_path / "nolabel.tsv")
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(UserError, match="unknown data format"):
        read_labelled(tmp_path / "data.txt")
    labels = LabelSet.from_labels(["pos", "neg", "pos"])
    with pytest.raises(UserError, match="'neutral'.*known: neg, pos"):
        labels.ids(["pos", "neutral"], "dev.tsv")
    with pytest.raises(UserError, match="only one label"):
        LabelSet.from_labels(["pos", "pos"])


def test_labels_sort_numerically_and_split_is_stratified():
    assert LabelSet.from_labels(["10", "2", "1"]).names == ["1", "2", "10"]
    labels = ["a"] * 80 + ["b"] * 20
    train, val = stratified_split(labels, 0.1, seed=0)
    assert sorted(train + val) == list(range(100))
    assert [labels[i] for i in val].count("a") == 8 and [labels[i] for i in val].count("b") == 2


def test_metrics_confusion_matrix_and_f1():
    m = classification_metrics([0, 1, 1, 1], [0, 0, 1, 1], ["neg", "pos"])
    assert m["confusion_matrix"] == [[1, 1], [0, 2]]
    assert m["accuracy"] == 0.75
    assert m["f1"]["neg"] == pytest.approx(2 / 3) and m["f1"]["pos"] == pytest.approx(0.8)


def test_finetune_classify_and_compress_from_the_command_line(tmp_path, base, capsys):
    data = write_tsv(tmp_path / "train.tsv")
    out = tmp_path / "clf"
    common = ["--epochs", "2", "--batch-size", "8", "--max-length", "16", "--lr", "3e-3"]
    assert main(["finetune", "--base", str(base), "--train", str(data), "--out", str(out), *common]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["confusion_matrix"]) == 2 and 0 <= result["accuracy"] <= 1
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "neg", "1": "pos"}
    assert not (out / "labels.json").exists()
    assert main(["classify", str(out), "--input", str(data)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 40 and {line["label"] for line in lines} <= {"neg", "pos"}

    report_dir = tmp_path / "small"
    assert main(["compress", str(out), "--train", str(data), "--val", str(data), "--out", str(report_dir),
                 "--pipeline", "distill:1,prune:0.5,quantize:int8", "--repeats", "2", *common[:2], "--epochs",
                 "1"]) == 0
    report = (report_dir / "report.md").read_text()
    assert "distill:1 -> prune:0.5 -> quantize:int8" in report and "size on disk" in report
    assert (report_dir / "report.png").stat().st_size > 1000
    rows = json.loads((report_dir / "report.json").read_text())
    assert rows["distill:1"]["parameters"] < rows["start"]["parameters"]
    small, _ = load_checkpoint(report_dir / "model")
    assert small.config.n_layer == 1 and small.blocks[0].self_attn.n_head == 1
    assert small.blocks[0].ffn.up.scheme == "int8"


def test_finetune_with_lora_saves_the_adapter(tmp_path, base, capsys):
    data = write_tsv(tmp_path / "train.tsv", n=20)
    out = tmp_path / "lora"
    assert main(["finetune", "--base", str(base), "--train", str(data), "--out", str(out), "--epochs", "1",
                 "--batch-size", "8", "--max-length", "16", "--lora-rank", "2", "--pooling", "mean",
                 "--lora-biases"]) == 0
    assert (out / "adapter.safetensors").is_file()
    json.loads(capsys.readouterr().out)
    model, _ = load_checkpoint(out)
    assert any("lora_a" in name for name, _ in model.named_parameters())
    assert model.config.pooling == "mean"
    assert model.blocks[0].ffn.up.bias.requires_grad and not model.blocks[0].ffn.up.weight.requires_grad


def test_cli_bad_inputs_exit_2_with_one_line(tmp_path, base, capsys):
    data = write_tsv(tmp_path / "train.tsv", n=10)
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\nmeh\tneutral\n")
    (tmp_path / "empty.tsv").write_text("")
    (tmp_path / "nolabel.tsv").write_text("sentence\tscore\nok\t1\n")
    cases = [
        (["--train", str(data), "--val", str(tmp_path / "dev.tsv")], "neutral"),
        (["--train", str(tmp_path / "empty.tsv")], "no examples"),
        (["--train", str(tmp_path / "nolabel.tsv")], "no label column"),
        (["--train", str(data), "--lora-targets", "q,zz", "--lora-rank", "2"], "unknown target"),
    ]
    for extra, message in cases:
        out = tmp_path / "never"
        code = main(["finetune", "--base", str(base), "--out", str(out), "--epochs", "1", *extra])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and not out.exists()
    assert main(["classify", str(base)]) == 2
    assert "not a classifier checkpoint" in capsys.readouterr().err
    assert main(["compress", str(base), "--train", str(data), "--val", str(data), "--out", str(tmp_path / "x"),
                 "--pipeline", "shrink"]) == 2
    assert "unknown pipeline stage" in capsys.readouterr().err


def _served_labels(path, texts) -> set:
    """The label names /v1/classify answers with. A live server configures uvicorn's logging to the
    sys.stderr of the moment, so no test that calls this may use capsys (it closes its stream)."""
    from tests.test_serving import LiveServer
    from attnlab.serving.app import ServeConfig, create_app

    model, tokenizer = load_checkpoint(path)
    with LiveServer(create_app(model, tokenizer, ServeConfig())) as server:
        data = server.post("/v1/classify", {"input": texts}).json()["data"]
    return {row["label"] for row in data} | {name for row in data for name in row["scores"]}


def _classified_labels(path, data, capsys) -> list:
    capsys.readouterr()
    assert main(["classify", str(path), "--input", str(data)]) == 0
    return [json.loads(line)["label"] for line in capsys.readouterr().out.splitlines()]


@pytest.fixture(scope="module")
def classifier(base, tmp_path_factory):
    """A tiny classifier fine-tuned from the command line on labels neg / pos."""
    directory = tmp_path_factory.mktemp("classifier")
    data = write_tsv(directory / "train.tsv", n=20)
    assert main(["finetune", "--base", str(base), "--train", str(data), "--out", str(directory / "clf"),
                 "--epochs", "1", "--max-length", "16"]) == 0
    return directory / "clf"


@pytest.fixture
def old_classifier(base, tmp_path):
    """A classifier as finetune wrote it before id2label: names in labels.json, none in config.json."""
    torch.manual_seed(0)
    model, tokenizer = load_checkpoint(base)
    old = tmp_path / "old"
    save_checkpoint(old, model.with_head("sequence", n_labels=2), tokenizer,
                    extra_json={"labels.json": {"labels": ["neg", "pos"], "max_length": 16}})
    config = json.loads((old / "config.json").read_text())
    del config["id2label"]
    (old / "config.json").write_text(json.dumps(config))
    return old


def test_finetune_writes_the_label_names_into_config_json_and_classify_shows_them(classifier, tmp_path, capsys):
    assert json.loads((classifier / "config.json").read_text())["id2label"] == {"0": "neg", "1": "pos"}
    assert not (classifier / "labels.json").exists()
    labels = _classified_labels(classifier, write_tsv(tmp_path / "data.tsv", n=6), capsys)
    assert len(labels) == 6 and set(labels) <= {"neg", "pos"}


def test_the_server_answers_with_the_label_names(classifier):
    assert _served_labels(classifier, ["a great film", "a dull mess"]) == {"neg", "pos"}


def test_hugging_face_export_and_import_keep_the_label_names(classifier, tmp_path):
    transformers = pytest.importorskip("transformers")
    from attnlab.interop import export_hf, import_hf

    model, tokenizer = load_checkpoint(classifier)
    export_hf(model, tmp_path / "hf", tokenizer)
    theirs = transformers.AutoConfig.from_pretrained(tmp_path / "hf")
    assert theirs.id2label == {0: "neg", 1: "pos"} and theirs.label2id == {"neg": 0, "pos": 1}
    back, _ = import_hf(tmp_path / "hf")
    assert back.config.id2label == {"0": "neg", "1": "pos"}


def test_a_checkpoint_with_the_old_labels_json_still_classifies_with_its_labels(old_classifier, tmp_path, capsys):
    assert load_checkpoint(old_classifier)[0].config.id2label == {"0": "neg", "1": "pos"}
    labels = _classified_labels(old_classifier, write_tsv(tmp_path / "data.tsv", n=6), capsys)
    assert len(labels) == 6 and set(labels) <= {"neg", "pos"}


def test_a_checkpoint_with_the_old_labels_json_is_served_with_its_labels(old_classifier):
    assert _served_labels(old_classifier, ["a great film"]) == {"neg", "pos"}


def test_id2label_is_checked_against_n_labels():
    config = BertConfig(head="sequence", n_labels=2, id2label={"0": "neg", "1": "pos"})
    assert BertConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    bad = [({"0": "neg"}, "indices"), ({0: "neg", 1: "pos"}, "indices"), ({"0": "neg", "2": "pos"}, "indices"),
           ({"0": "neg", "1": "neg"}, "distinct"), ({"0": "neg", "1": 3}, "distinct")]
    for id2label, words in bad:
        with pytest.raises(UserError, match=words):
            BertConfig(head="sequence", n_labels=2, id2label=id2label)
    from attnlab.models import LongformerConfig
    with pytest.raises(UserError, match="longformer config: id2label"):
        LongformerConfig(n_labels=3, id2label={"0": "a", "1": "b"})


def test_a_new_head_drops_the_old_names_and_a_fitting_classifier_is_renamed():
    torch.manual_seed(0)
    base_model = build_model(BertConfig(n_layer=1, n_head=2, d_model=16, max_positions=16, vocab_size=50))
    named = base_model.classifier_for(["neg", "pos"])
    assert named.config.id2label == {"0": "neg", "1": "pos"}
    assert named.with_head("token", n_labels=3).config.id2label is None
    head = named.classifier.weight.clone()
    renamed = named.classifier_for(["bad", "good"])
    assert renamed is named and renamed.config.id2label == {"0": "bad", "1": "good"}
    assert torch.equal(renamed.classifier.weight, head)
    assert named.classifier_for(["a", "b", "c"]).config.id2label == {"0": "a", "1": "b", "2": "c"}


def test_batches_equal_the_tokenizer_padding_and_cover_every_example():
    tokenizer = load_hf_tokenizer(minilm_path())
    texts = ["a great film", "hello there my friend , how are you today", "x", "no"]
    data = ClassificationData(tokenizer, texts, [1, 0, 1, 0], max_length=8)
    reference = tokenizer.batch_encode(texts, max_length=8)
    batch = data._batch([0, 1, 2, 3])
    assert all(torch.equal(batch[k], reference[k]) for k in reference)
    seen = [i for indices, _ in data.ordered_batches(3) for i in indices]
    assert sorted(seen) == [0, 1, 2, 3]
    labels = torch.cat([b["labels"] for b in data.shuffled_batches(3, seed=0)])
    assert sorted(labels.tolist()) == [0, 0, 1, 1]


def test_a_family_without_heads_to_fine_tune_refuses_in_one_line():
    from attnlab.models import build_model, preset
    with pytest.raises(UserError) as err:
        build_model(preset("gpt-tiny")).classifier_for(["neg", "pos"])
    assert "gpt models have no sequence-classification head" in str(err.value) and "\n" not in str(err.value)


def test_classify_on_a_labelled_file_scores_each_text_once(classifier, tmp_path, capsys):
    model_class = type(load_checkpoint(classifier)[0])
    rows = []
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, kwargs, output: rows.append(len(kwargs["input_ids"])) if isinstance(module, model_class)
        else None, with_kwargs=True)
    try:
        assert main(["classify", str(classifier), "--input", str(write_tsv(tmp_path / "data.tsv", n=6))]) == 0
    finally:
        hook.remove()
    assert sum(rows) == 6
    assert "accuracy" in capsys.readouterr().err


def test_finetune_stops_at_max_steps_and_shows_its_steps_between_evaluations(base, tmp_path, capsys, monkeypatch):
    import attnlab.progress

    monkeypatch.setattr(attnlab.progress, "LINE_EVERY_S", 0.0)
    data = write_tsv(tmp_path / "train.tsv", n=40)
    out = tmp_path / "clf"
    assert main(["finetune", "--base", str(base), "--train", str(data), "--out", str(out), "--epochs", "5",
                 "--batch-size", "4", "--max-length", "16", "--max-steps", "3", "--eval-every", "100"]) == 0
    err = capsys.readouterr().err
    steps = [line for line in err.splitlines() if line.startswith("fine-tuning:")]
    assert [line.split()[1] for line in steps] == ["1/3", "2/3", "3/3"]
    assert "step 3/3: loss" in err and "step 4" not in err
    assert main(["finetune", "--base", str(base), "--train", str(data), "--out", str(tmp_path / "x"),
                 "--max-steps", "-1"]) == 2
    assert "max_steps" in capsys.readouterr().err
