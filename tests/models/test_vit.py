"""ViT against Hugging Face (random tiny configs, fp32): ViTModel with its pooler and
ViTForImageClassification, at the config's size and at a second resolution with interpolated
positions; import and export through the interop registry; the image processor and the labelled
image data; a tiny ViT learns a toy task through the image_classification task."""

import io

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from attnlab.cli import main
from attnlab.data.media import read_labelled_media, stratified_split
from attnlab.errors import UserError
from attnlab.interop import export_hf, import_hf
from attnlab.models.base import build_model, preset
from attnlab.models.vit import ViTConfig
from attnlab.processors import ImageProcessor
from attnlab.training.tasks import resolve_run, setup_task

HF_TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, image_size=16,
               patch_size=4, num_channels=3, hidden_act="gelu", layer_norm_eps=1e-12)


def hf_model(cls, tmp_path, **overrides):
    torch.manual_seed(0)
    config = transformers.ViTConfig(**{**HF_TINY, **overrides})
    model = cls(config).eval()
    with torch.no_grad():  # HF zeroes some tensors at init; random values test the key map better
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.save_pretrained(tmp_path / "hf")
    return model


def pixels(height=16, width=16, batch=3, seed=0):
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_vit_model_with_pooler_matches_hugging_face(tmp_path, backend):
    theirs = hf_model(transformers.ViTModel, tmp_path)
    ours, _ = import_hf(tmp_path / "hf")
    ours.config.attn_backend = backend
    for block in ours.blocks:
        block.self_attn.backend = backend
    assert ours.config.head == "none" and ours.config.pooler
    x = pixels()
    with torch.no_grad():
        expected = theirs(pixel_values=x)
        hidden = ours(x).hidden_states
        torch.testing.assert_close(hidden, expected.last_hidden_state, rtol=0, atol=1e-5)
        torch.testing.assert_close(ours.pool(hidden), expected.pooler_output, rtol=0, atol=1e-5)


def test_vit_for_image_classification_matches_hugging_face_logits_and_loss(tmp_path):
    theirs = hf_model(transformers.ViTForImageClassification, tmp_path, num_labels=5,
                      id2label={i: f"class{i}" for i in range(5)})
    ours, _ = import_hf(tmp_path / "hf")
    assert ours.config.head == "classifier" and not ours.config.pooler
    assert ours.config.id2label == {str(i): f"class{i}" for i in range(5)}
    x, labels = pixels(), torch.tensor([0, 4, 2])
    with torch.no_grad():
        expected = theirs(pixel_values=x, labels=labels)
        out = ours(x, labels=labels)
    torch.testing.assert_close(out.logits, expected.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.loss, expected.loss, rtol=0, atol=1e-5)


@pytest.mark.parametrize("size", [(24, 24), (12, 20)])
def test_a_second_resolution_matches_hugging_face_interpolated_positions(tmp_path, size):
    theirs = hf_model(transformers.ViTForImageClassification, tmp_path, num_labels=3)
    ours, _ = import_hf(tmp_path / "hf")
    x = pixels(*size)
    with torch.no_grad():
        expected = theirs(pixel_values=x, interpolate_pos_encoding=True).logits
        got = ours(x)
    assert got.hidden_states.shape[1] == 1 + (size[0] // 4) * (size[1] // 4)
    torch.testing.assert_close(got.logits, expected, rtol=0, atol=1e-5)


def test_export_loads_in_hugging_face_and_imports_back(tmp_path):
    torch.manual_seed(0)
    ours = build_model(preset("vit-tiny", id2label={"0": "cat", "1": "dog", "2": "owl"})).eval()
    export_hf(ours, tmp_path / "out")
    theirs = transformers.ViTForImageClassification.from_pretrained(tmp_path / "out").eval()
    back, _ = import_hf(tmp_path / "out")
    x = pixels()
    with torch.no_grad():
        reference = ours(x).logits
        torch.testing.assert_close(theirs(pixel_values=x).logits, reference, rtol=0, atol=1e-5)
        torch.testing.assert_close(back(x).logits, reference, rtol=0, atol=0)
    assert theirs.config.id2label == {0: "cat", 1: "dog", 2: "owl"} and back.config == ours.config


def test_a_bare_encoder_with_pooler_exports_as_vit_model(tmp_path):
    torch.manual_seed(0)
    ours = build_model(preset("vit-tiny", head="none", pooler=True)).eval()
    export_hf(ours, tmp_path / "out")
    theirs = transformers.ViTModel.from_pretrained(tmp_path / "out").eval()
    x = pixels()
    with torch.no_grad():
        hidden = ours(x).hidden_states
        expected = theirs(pixel_values=x)
    torch.testing.assert_close(hidden, expected.last_hidden_state, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.pool(hidden), expected.pooler_output, rtol=0, atol=1e-5)


def test_configs_hugging_face_cannot_express_are_refused_in_one_line(tmp_path):
    hf_model(transformers.ViTModel, tmp_path, qkv_bias=False)
    with pytest.raises(UserError, match="qkv_bias") as err:
        import_hf(tmp_path / "hf")
    assert "\n" not in str(err.value)


def test_the_config_checks_the_patch_grid():
    with pytest.raises(UserError, match="image_size .* must be divisible by patch_size"):
        ViTConfig(image_size=30, patch_size=4)


# -- the image processor -------------------------------------------------------------------------

def encoded(array, fmt) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def test_the_processor_reads_png_jpeg_and_npy_and_makes_normalised_pixels(tmp_path):
    rows, columns = np.meshgrid(np.linspace(0, 255, 20), np.linspace(0, 255, 30), indexing="ij")
    rgb = np.stack([rows, columns, 255 - rows], axis=-1).astype(np.uint8)  # smooth: JPEG keeps it closely
    (tmp_path / "a.png").write_bytes(encoded(rgb, "PNG"))
    (tmp_path / "b.jpg").write_bytes(encoded(rgb, "JPEG"))
    np.save(tmp_path / "c.npy", rgb)
    processor = ImageProcessor(image_size=16, channels=3, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    png, jpg, npy = (processor.read(tmp_path / name) for name in ("a.png", "b.jpg", "c.npy"))
    assert np.array_equal(png, rgb) and np.array_equal(npy, rgb) and np.abs(jpg.astype(int) - rgb).mean() < 3
    x = processor([png, rgb.astype(np.float32) / 255])["pixel_values"]
    assert x.shape == (2, 3, 16, 16)
    torch.testing.assert_close(x[0], x[1], rtol=0, atol=1e-5)  # uint8 and 0..1 floats are the same image
    resized = torch.nn.functional.interpolate(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255, (16, 16),
                                              mode="bilinear", antialias=True)[0]
    torch.testing.assert_close(x[0], (resized - 0.5) / 0.25)


def test_the_processor_converts_channels():
    grey = np.full((8, 8), 255, dtype=np.uint8)
    to_rgb = ImageProcessor(image_size=8, channels=3, mean=[0.0] * 3, std=[1.0] * 3)
    assert torch.equal(to_rgb([grey])["pixel_values"], torch.ones(1, 3, 8, 8))
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # pure red, alpha dropped: luminance 0.299
    to_grey = ImageProcessor(image_size=8, channels=1, mean=[0.0], std=[1.0])
    torch.testing.assert_close(to_grey([rgba])["pixel_values"], torch.full((1, 1, 8, 8), 0.299))


@pytest.mark.parametrize("content, problem", [(b"not an image", "not a readable PNG or JPEG"),
                                              (b"\x93NUMPY garbage", "not a readable .npy"),
                                              (np.zeros((2, 3, 5)), "must be an array (H, W) or (H, W, C)"),
                                              (np.array(["a", "b"]), "non-empty array of numbers"),
                                              (np.full((4, 4), np.nan), "NaN")])
def test_a_bad_file_is_one_line_naming_it(tmp_path, content, problem):
    path = tmp_path / ("bad.npy" if isinstance(content, np.ndarray) else "bad.png")
    if isinstance(content, np.ndarray):
        np.save(path, content)
    else:
        path.write_bytes(content)
    with pytest.raises(UserError) as err:
        ImageProcessor(image_size=8, channels=1).read(path)
    assert problem in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_and_foreign_files_are_refused(tmp_path):
    processor = ImageProcessor(image_size=8, channels=1)
    with pytest.raises(UserError, match="does not exist"):
        processor.read(tmp_path / "missing.png")
    (tmp_path / "sound.wav").write_bytes(b"RIFF")
    with pytest.raises(UserError, match=r"must end in \.png, \.jpg, \.jpeg or \.npy"):
        processor.read(tmp_path / "sound.wav")


def test_fit_takes_the_statistics_of_the_training_images_and_the_processor_round_trips(tmp_path):
    images = [np.full((4, 4), value, dtype=np.uint8) for value in (0, 255)]
    fitted = ImageProcessor(image_size=4, channels=1).fit(images)
    assert fitted.mean == [0.5] and fitted.std == pytest.approx([0.508001], abs=1e-5)  # unbiased
    fitted.save(tmp_path)
    assert ImageProcessor.exists(tmp_path) and ImageProcessor.load(tmp_path) == fitted


def test_augmentation_is_seeded_keeps_shapes_and_only_moves_pixels():
    processor = ImageProcessor(image_size=16, channels=1, mean=[0.0], std=[1.0], shift=3, rotate=15, scale=0.1)
    image = np.zeros((16, 16), dtype=np.uint8)
    image[6:10, 6:10] = 255
    batch = processor([image] * 4)
    first = processor.augment(batch, torch.Generator().manual_seed(1))["pixel_values"]
    again = processor.augment(batch, torch.Generator().manual_seed(1))["pixel_values"]
    assert torch.equal(first, again) and first.shape == (4, 1, 16, 16)
    assert not torch.equal(first, batch["pixel_values"]) and first.min() >= 0 and first.max() <= 1
    still = ImageProcessor(image_size=16, channels=1, shift=0).augment(batch, torch.Generator().manual_seed(1))
    torch.testing.assert_close(still["pixel_values"], batch["pixel_values"], rtol=0, atol=1e-6)


# -- labelled image data and the image_classification task -----------------------------------------

def bars(count: int, seed: int = 0):
    """Images of one bright bar, horizontal (label "h") or vertical ("v"), at a random place."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 40, (count, 16, 16)).astype(np.uint8)
    y = np.array(["h", "v"] * (count // 2))
    for image, label, at in zip(x, y, rng.integers(2, 14, count)):
        if label == "h":
            image[at - 1:at + 1, :] = 255
        else:
            image[:, at - 1:at + 1] = 255
    return x, y


def test_a_class_folder_and_an_npz_read_the_same(tmp_path):
    x, y = bars(6)
    for i, (image, label) in enumerate(zip(x, y)):
        (tmp_path / "folder" / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp_path / "folder" / label / f"{i}.png")
    np.savez(tmp_path / "data.npz", images=x, labels=y)
    processor = ImageProcessor(image_size=16, channels=1)
    folder = read_labelled_media(tmp_path / "folder", processor)
    arrays = read_labelled_media(tmp_path / "data.npz", processor)
    assert folder.names == arrays.names == ["h", "v"]
    assert sorted(map(bytes, folder.items)) == sorted(map(bytes, arrays.items))
    with pytest.raises(UserError, match="label\\(s\\) v the model does not know"):
        read_labelled_media(tmp_path / "data.npz", processor, names=["h", "x"])


def test_the_validation_split_is_stratified_and_seeded():
    x, y = bars(200)
    data = read_labelled_media_from(x, y)
    train, val = stratified_split(data, 0.15, seed=3)
    assert len(val) == 30 and np.bincount(val.labels).tolist() == [15, 15] and len(train) == 170
    again, _ = stratified_split(data, 0.15, seed=3)
    assert np.array_equal(again.labels, train.labels) and all(a is b for a, b in zip(again.items, train.items))


def read_labelled_media_from(x, y):
    from attnlab.data.media import LabelledMedia
    names = sorted(set(y))
    return LabelledMedia(list(x), np.array([names.index(v) for v in y]), names)


def test_the_task_refuses_a_model_of_another_kind_in_one_line(tmp_path):
    run = resolve_run({"task": "image_classification", "model": {"preset": "gpt2-nano"}, "data": {"path": "x.npz"}})
    with pytest.raises(UserError) as err:
        setup_task(run, tmp_path, resume=False)
    assert "a causal language model" in str(err.value) and "task=lm" in str(err.value)
    assert "\n" not in str(err.value)


def test_the_model_decides_the_input_size(tmp_path):
    x, y = bars(20)
    np.savez(tmp_path / "bars.npz", x=x, y=y)
    run = resolve_run({"task": "image_classification", "model": {"preset": "vit-tiny"}, "tokenizer": {"image_size": 32},
                       "data": {"path": str(tmp_path / "bars.npz")}})
    with pytest.raises(UserError, match="image_size=32 differs from the model's 16"):
        setup_task(run, tmp_path / "run", resume=False)


def test_a_tiny_vit_learns_bars_through_the_command_line(tmp_path, capsys):
    x, y = bars(400)
    np.savez(tmp_path / "bars.npz", x=x, y=y)
    run = tmp_path / "run"
    assert main(["train", "--preset", "vit-tiny", "--data", str(tmp_path / "bars.npz"), "--out", str(run),
                 "model.n_channels=1", "tokenizer.shift=1", "data.augment=true", "train.max_steps=120",
                 "train.warmup_steps=10", "train.lr=3e-3", "train.eval_interval=120", "train.batch_size=32",
                 "train.progress=false", "train.device=cpu"]) == 0
    assert '"val_accuracy"' in capsys.readouterr().out
    assert main(["eval", str(run), "--data", str(tmp_path / "bars.npz")]) == 0
    scores = __import__("json").loads(capsys.readouterr().out)
    assert scores["labels"] == ["h", "v"] and scores["accuracy"] >= 0.9, scores


# -- attention rollout --------------------------------------------------------------------------

def test_attention_rollout_is_a_distribution_over_patches_and_uniform_when_attention_is():
    from attnlab.inference.attention_maps import attention_rollout

    torch.manual_seed(0)
    model = build_model(preset("vit-tiny")).eval()
    heat = attention_rollout(model, pixels())
    assert heat.shape == (3, 4, 4) and (heat >= 0).all()
    torch.testing.assert_close(heat.sum((1, 2)), torch.ones(3))
    assert heat.std() > 0
    with torch.no_grad():
        for block in model.blocks:  # q = k = 0: every query attends evenly
            for linear in (block.self_attn.q_proj, block.self_attn.k_proj):
                linear.weight.zero_()
                linear.bias.zero_()
    torch.testing.assert_close(attention_rollout(model, pixels()), torch.full((3, 4, 4), 1 / 16))


def test_classify_draws_the_attention_over_each_image(tmp_path, capsys):
    torch.manual_seed(0)
    from attnlab.checkpoint import save_checkpoint

    model = build_model(preset("vit-tiny", n_channels=1)).eval()
    save_checkpoint(tmp_path / "ckpt", model, ImageProcessor.example(model.config))
    x, _ = bars(2)
    files = [tmp_path / f"bar{i}.png" for i in range(2)]
    for image, path in zip(x, files):
        Image.fromarray(image).save(path)
    assert main(["classify", str(tmp_path / "ckpt"), *map(str, files), "--attention-out", str(tmp_path / "maps")]) == 0
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["0-bar0.png", "1-bar1.png"]
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_an_imported_checkpoint_brings_hugging_faces_normalisation(tmp_path):
    hf_model(transformers.ViTForImageClassification, tmp_path, num_labels=3)
    hf_processor = transformers.ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.4, 0.5, 0.6],
                                                  image_std=[0.2, 0.3, 0.4])
    hf_processor.save_pretrained(tmp_path / "hf")
    _, processor = import_hf(tmp_path / "hf")
    assert processor.mean == [0.4, 0.5, 0.6] and processor.std == [0.2, 0.3, 0.4] and processor.image_size == 16
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    expected = torch.as_tensor(hf_processor(images=[image], return_tensors="np")["pixel_values"])
    torch.testing.assert_close(processor([image])["pixel_values"], expected, rtol=0, atol=1e-5)
    (tmp_path / "hf" / "preprocessor_config.json").unlink()
    assert import_hf(tmp_path / "hf")[1].mean == [0.5, 0.5, 0.5]  # ViTImageProcessor's defaults
