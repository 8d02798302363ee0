"""The one image module (runtime/image.py): every odd file gives training and the runtime the same
uint8 pixels, and a real exported graph run by the runtime scores them like the PyTorch model."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import fake_metadata

from stpm_edge.errors import DataError
from stpm_edge.runtime import image
from stpm_edge.runtime.metadata import parse_metadata
from stpm_edge.runtime.preprocess import prepare_batch

SIZE = 64


def _rgb(h: int = 45, w: int = 70, seed: int = 0) -> np.ndarray:
    """Smooth RGB content with distinct channels (so a channel swap or rotation shows)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    noise = np.random.default_rng(seed).integers(0, 40, (h, w, 3))
    base = np.stack([xx * 3, yy * 5, 255 - xx * 2], axis=2) + noise
    return np.clip(base, 0, 255).astype(np.uint8)


def _write(path: Path, array: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), array)
    return path


def _odd_files(folder: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """kind -> (file, the uint8 RGB it must decode to). Every file is 45x70 (H x W) as stored."""
    from PIL import Image

    rgb = _rgb()
    bgr = rgb[..., ::-1]
    gray8 = rgb[..., 1].copy()
    gray16 = gray8.astype(np.uint16) * 257 + np.uint16(100)  # not a multiple of 257
    rgb16 = rgb.astype(np.uint16) * 257 - np.uint16(120)
    rgb16[rgb == 0] = 0
    floats = rgb.astype(np.float32) / 255.0 + np.float32(0.0007)
    files: dict[str, tuple[Path, np.ndarray]] = {}
    files["gray8"] = (_write(folder / "gray8.png", gray8), np.repeat(gray8[..., None], 3, 2))
    expected16 = ((gray16.astype(np.uint32) + 128) // 257).astype(np.uint8)  # round(v / 257)
    files["gray16"] = (
        _write(folder / "gray16.png", gray16),
        np.repeat(expected16[..., None], 3, 2),
    )
    files["rgb16"] = (
        _write(folder / "rgb16.png", np.ascontiguousarray(rgb16[..., ::-1])),
        ((rgb16.astype(np.uint32) + 128) // 257).astype(np.uint8),
    )
    files["float_tiff"] = (
        _write(folder / "float.tiff", np.ascontiguousarray(floats[..., ::-1])),
        (np.clip(floats, 0, 1) * np.float32(255) + np.float32(0.5)).astype(np.uint8),
    )
    bgra = np.dstack([bgr, np.full(gray8.shape, 90, np.uint8)])
    files["rgba"] = (_write(folder / "rgba.png", bgra), rgb)
    palette = Image.fromarray(rgb).quantize(colors=16)
    palette.save(folder / "palette.png")
    files["palette"] = (folder / "palette.png", np.asarray(palette.convert("RGB")))
    # EXIF orientation 6 ("rotate 90 CW to display"): the rule is pixels as stored
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(folder / "exif_rotated.jpg", exif=exif, quality=95)
    stored = cv2.imread(str(folder / "exif_rotated.jpg"), cv2.IMREAD_UNCHANGED)[..., ::-1]
    files["exif_jpeg"] = (folder / "exif_rotated.jpg", stored)
    unicode_path = folder / "prüfteil_検査_ß.png"
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(bgr))
    assert ok
    buf.tofile(unicode_path)  # cv2.imwrite cannot be trusted with this name on every OS
    files["unicode_name"] = (unicode_path, rgb)
    return files


@pytest.fixture(scope="module")
def odd_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, np.ndarray]]:
    return _odd_files(tmp_path_factory.mktemp("odd"))


KINDS = [
    "gray8",
    "gray16",
    "rgb16",
    "float_tiff",
    "rgba",
    "palette",
    "exif_jpeg",
    "unicode_name",
]


@pytest.mark.parametrize("kind", KINDS)
def test_decode_applies_the_one_rule(odd_files, kind: str) -> None:
    path, expected = odd_files[kind]
    rgb = image.read_image(path)
    assert rgb.dtype == np.uint8 and rgb.shape == (45, 70, 3) and rgb.flags.c_contiguous
    np.testing.assert_array_equal(rgb, expected)
    # bytes, path and an already decoded OpenCV array take the same route
    np.testing.assert_array_equal(image.decode_image(path.read_bytes()), expected)
    np.testing.assert_array_equal(image.decode_bgr(image.decode_raw(path)), expected[..., ::-1])


def test_camera_folder_source_reads_like_training(odd_files) -> None:
    """stpm-camera's folder source hands the detector what training decodes (Unicode name too)."""
    from stpm_edge.runtime.camera.sources import open_source

    folder = odd_files["gray8"][0].parent
    source = open_source(str(folder))
    source.open()
    seen = {}
    while (item := source.read()) is not None:
        seen[Path(item.origin).name] = image.to_bgr(item.image)
    source.close()
    assert sorted(seen) == sorted(path.name for path, _ in odd_files.values())
    for path, expected in odd_files.values():
        np.testing.assert_array_equal(seen[path.name], expected[..., ::-1])


def test_exif_orientation_is_ignored_on_purpose(odd_files) -> None:
    path, _ = odd_files["exif_jpeg"]
    # cv2.imread's default applies the tag (a camera frame never has one): shapes differ
    assert cv2.imread(str(path)).shape[:2] == (70, 45)
    assert image.read_image(path).shape[:2] == (45, 70)


def _info(input_format: str = "uint8_nhwc", color_order: str = "RGB"):
    return parse_metadata(fake_metadata(SIZE, input_format, color_order))


@pytest.mark.parametrize("kind", KINDS)
def test_training_and_runtime_feed_bit_identical_input(odd_files, kind: str) -> None:
    torch = pytest.importorskip("torch")
    from stpm_edge.data.mvtec import Sample
    from stpm_edge.data.torch_dataset import ImageDataset

    path, _ = odd_files[kind]
    info = _info("float32_nchw")
    dataset = ImageDataset([Sample(path, 0, "good", None)], SIZE, info.mean, info.std)
    trained_uint8 = dataset._load(0)[0]  # resized uint8 RGB, before normalisation
    frame = image.decode_bgr(path)  # what a camera folder source hands the detector
    runtime_rgb = prepare_batch([frame], _info(color_order="RGB"))[0]
    runtime_bgr = prepare_batch([frame], _info(color_order="BGR"))[0]
    np.testing.assert_array_equal(runtime_rgb, trained_uint8)
    np.testing.assert_array_equal(runtime_bgr, trained_uint8[..., ::-1])
    # the float graph input equals the training tensor bit for bit
    runtime_float = prepare_batch([frame], info)[0]
    assert torch.equal(torch.from_numpy(runtime_float), dataset[0]["image"])


def test_to_uint8_rule() -> None:
    v16 = np.array([0, 128, 129, 257, 0x12FF, 65535], np.uint16)
    assert image.to_uint8(v16).tolist() == [0, 0, 1, 1, 19, 255]  # round(v / 257), not v >> 8
    floats = np.array([-1.0, 0.0, 0.5, 1.0, 2.0, np.nan], np.float32)
    assert image.to_uint8(floats).tolist() == [0, 0, 128, 255, 255, 0]
    with pytest.raises(DataError, match="sample type int16"):
        image.to_uint8(np.zeros(3, np.int16))


def test_bad_inputs_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        image.read_image(tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match="bad.png"):
        image.read_image(bad)
    with pytest.raises(DataError, match="image bytes"):
        image.decode_image(b"")


def test_list_images_uses_the_one_suffix_list(tmp_path: Path) -> None:
    for name in ("b.PNG", "a.jpg", "c.tiff", "d.txt", ".hidden.png", "e.webp"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in image.list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.tiff", "e.webp"]
    assert {".png", ".jpg", ".tif", ".tiff"} <= set(image.IMAGE_SUFFIXES)
    from stpm_edge.data import IMAGE_SUFFIXES

    assert IMAGE_SUFFIXES is image.IMAGE_SUFFIXES


def test_to_model_input_order_and_normalisation() -> None:
    rgb = _rgb(20, 30)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    for fmt, order in (("uint8_nhwc", "BGR"), ("uint8_nhwc", "RGB"), ("float32_nchw", "BGR")):
        from_rgb = image.to_model_input(
            [rgb], 16, fmt, order, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3), "RGB"
        )
        from_bgr = image.to_model_input(
            [bgr], 16, fmt, order, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3), "BGR"
        )
        np.testing.assert_array_equal(from_rgb, from_bgr)
    x = image.normalize(np.full((2, 2, 3), 255, np.uint8), (0.5, 0.5, 0.5), (0.5, 0.25, 0.5))
    assert x.shape == (3, 2, 2) and x[:, 0, 0].tolist() == [1.0, 2.0, 1.0]
    with pytest.raises(DataError, match="needs mean and std"):
        image.to_model_input([rgb], 16, "float32_nchw")


def test_normalize_is_the_float32_formula_for_every_8_bit_value() -> None:
    """The lookup table must give exactly (x / 255 - mean) / std in float32, channel by channel,
    for single images, batches and strided views (a BGR flip)."""
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    values = np.arange(256, dtype=np.uint8)
    rgb = np.stack([values, values[::-1], np.roll(values, 77)], axis=-1).reshape(16, 16, 3)
    batch = np.stack([rgb, rgb[::-1], rgb[:, ::-1]])

    def formula(x: np.ndarray) -> np.ndarray:
        m = np.asarray(mean, np.float32)
        s = np.asarray(std, np.float32)
        return np.moveaxis((x.astype(np.float32) / np.float32(255.0) - m) / s, -1, -3)

    for x in (rgb, batch, rgb[..., ::-1], rgb.astype(np.float64)):
        got = image.normalize(x, mean, std)
        assert got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_array_equal(got, formula(x))


def test_synthetic_frames_are_deterministic_bgr() -> None:
    a = image.synthetic_frames(6, 24, 32, seed=3, extremes=True)
    b = image.synthetic_frames(6, 24, 32, seed=3, extremes=True)
    assert len(a) == 6 and all(f.shape == (24, 32, 3) and f.dtype == np.uint8 for f in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert a[0].max() == 0 and a[1].min() == 255  # the numerics extremes come first
    smooth = image.synthetic_frames(2, 24, 32, seed=3)
    assert smooth[0].std() > 0 and not np.array_equal(smooth[0], smooth[1])


def test_real_graph_scores_odd_files_like_pytorch(
    odd_files, exported_onnx: Path, trained_model, torch_reference
) -> None:
    """The exported graph through the runtime (decode -> Detector) vs STPM.score_map on the
    training pipeline's tensors: the same raw scores within float tolerance."""
    from stpm_edge.runtime.detector import AnomalyDetector

    paths = [odd_files[k][0] for k in KINDS]
    rgb = np.stack([image.resize_image(image.read_image(p), SIZE) for p in paths])
    _, torch_scores = torch_reference(trained_model, rgb)
    with AnomalyDetector(exported_onnx, backend="ort-cpu", threads=1) as det:
        assert json.loads(det.info.raw["stpm.input_size"]) == [SIZE, SIZE]
        preds = det.predict([image.decode_bgr(p) for p in paths])
    scores = np.array([p.score for p in preds])
    np.testing.assert_allclose(scores, torch_scores, rtol=1e-4, atol=1e-7)


def test_jpeg_round_trip_keeps_rgb_order_and_shape() -> None:
    """The colour map's gate copies (stpm_edge.colour_map): RGB in, RGB out, the codec's error
    only; a quality outside 1-100 is refused by name."""
    from stpm_edge.runtime.image import jpeg_round_trip

    images = np.zeros((2, 32, 48, 3), np.uint8)
    images[0, ..., 0] = 200  # red
    images[1, ..., 2] = 200  # blue
    out = jpeg_round_trip(images, 90)
    assert out.shape == images.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - images).max() <= 8  # flat colours: a few levels at most
    assert out[0, ..., 0].mean() > 150 and out[1, ..., 2].mean() > 150
    with pytest.raises(DataError, match="JPEG quality 0"):
        jpeg_round_trip(images, 0)
