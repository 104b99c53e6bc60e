"""Pre- and postprocessing shared by every backend: decode, letterbox, postprocess, COCO RLE."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from models.decode import ImageDecodeError, decode_image, image_files, read_image
from models.postprocess import postprocess
from models.preprocess import PAD_VALUE, Letterbox, to_tensor_layout
from models.rle import decode_rle, encode_rle, encode_rles, rle_area

# ---- decode ---------------------------------------------------------------------------------


def encode(array: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, array)
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)


def test_decode_colour_png_is_rgb(rgb):
    out = decode_image(encode(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), ".png"))
    assert out.format == "PNG" and out.bit_depth == 8 and out.channels == 3
    assert np.array_equal(out.rgb, rgb)


def test_decode_grey_repeats_the_channel(rgb):
    grey = rgb[..., 0]
    out = decode_image(encode(grey, ".png"))
    assert out.channels == 1 and out.rgb.shape == (37, 53, 3)
    assert all(np.array_equal(out.rgb[..., c], grey) for c in range(3))


def test_decode_drops_alpha(rgb):
    bgra = np.dstack([cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), np.full(rgb.shape[:2], 7, np.uint8)])
    out = decode_image(encode(bgra, ".png"))
    assert out.channels == 4 and np.array_equal(out.rgb, rgb)


@pytest.mark.parametrize("colour", [False, True])
def test_decode_16_bit_keeps_the_high_byte(rgb, colour):
    wide = rgb.astype(np.uint16) * 256 + 3  # 8-bit value v as the high byte, noise below
    src = cv2.cvtColor(wide, cv2.COLOR_RGB2BGR) if colour else wide[..., 1]
    out = decode_image(encode(src, ".png"))
    assert out.bit_depth == 16
    expect = rgb if colour else np.repeat(rgb[..., 1:2], 3, axis=2)
    assert np.array_equal(out.rgb, expect)


def test_decode_jpeg_and_bmp(rgb):
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    assert decode_image(encode(bgr, ".bmp")).format == "BMP"
    jpg = decode_image(encode(bgr, ".jpg"))
    assert jpg.format == "JPEG" and jpg.rgb.shape == rgb.shape


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"definitely not an image", "not-an-image"),
        ("gif", "unsupported-format"),
    ],
)
def test_decode_refuses_bad_input_clearly(data, reason):
    if data == "gif":  # a real image in a format we do not take
        buf = io.BytesIO()
        Image.new("RGB", (4, 3)).save(buf, format="GIF")
        data = buf.getvalue()
    with pytest.raises(ImageDecodeError) as err:
        decode_image(data)
    assert err.value.reason == reason


def test_decode_refuses_truncated_and_oversized(rgb):
    png = encode(rgb, ".png")
    with pytest.raises(ImageDecodeError) as err:
        decode_image(png[: len(png) // 2])
    assert err.value.reason == "corrupt"
    with pytest.raises(ImageDecodeError) as err:
        decode_image(png, max_bytes=100)
    assert err.value.reason == "too-large"
    with pytest.raises(ImageDecodeError) as err:
        decode_image(png, max_pixels=37 * 53 - 1)
    assert err.value.reason == "too-many-pixels"


# ---- letterbox -------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    w=st.integers(8, 600),
    h=st.integers(8, 600),
    size=st.sampled_from([128, 320]),
    frac=st.tuples(*[st.floats(0, 1)] * 4),
)
def test_boxes_round_trip_through_the_letterbox(w, h, size, frac):
    lb = Letterbox.fit(w, h, size)
    x0, x1 = sorted((frac[0] * w, frac[1] * w))
    y0, y1 = sorted((frac[2] * h, frac[3] * h))
    box = np.array([[x0, y0, x1, y1]], dtype=np.float32)
    net = lb.boxes_to_network(box)
    assert (net >= 0).all() and (net <= 1 + 1e-6).all()
    assert np.allclose(lb.boxes_to_original(net), box, atol=1e-3 * max(w, h))


def test_letterbox_pads_bottom_right_and_scales_to_unit_range():
    image = np.full((97, 150, 3), 200, np.uint8)
    lb = Letterbox.fit(150, 97, 128)
    out = lb.image(image)
    w, h = lb.inner
    assert (w, h) == (128, 83)
    assert (out[:h, :w] == 200).all() and (out[h:] == PAD_VALUE).all()
    x = to_tensor_layout(out)
    assert x.shape == (3, 128, 128) and x.dtype == np.float32 and 0 <= x.min() <= x.max() <= 1


def test_postprocess_maps_a_detection_back_to_original_pixels():
    """A query whose box and mask cover a known region of a 150x97 image comes back there."""
    w, h, s = 150, 97, 128
    lb = Letterbox.fit(w, h, s)
    region = np.array([30, 20, 90, 60], dtype=np.float32)  # xyxy original pixels
    x0, y0, x1, y1 = lb.boxes_to_network(region[None])[0]
    q, c, m = 3, 2, s // 4
    logits = np.full((q, c), -8.0, np.float32)
    logits[1, 1] = 3.0  # query 1 says class 1, p = 0.95
    boxes = np.tile(np.array([0.5, 0.5, 0.1, 0.1], np.float32), (q, 1))
    boxes[1] = [(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0]
    masks = np.full((q, m, m), -10.0, np.float32)
    my0, my1, mx0, mx1 = (round(v * m) for v in (y0, y1, x0, x1))
    masks[1, my0:my1, mx0:mx1] = 10.0
    for from_mask in (False, True):
        det = postprocess(logits, boxes, masks, lb, 0.5, 10, box_from_mask=from_mask)
        assert len(det) == 1 and det.class_index[0] == 1
        assert det.scores[0] == pytest.approx(1 / (1 + np.exp(-3.0)), abs=1e-6)
        mask_pixel = s / m / lb.scale  # one mask-logit cell in original pixels
        assert np.allclose(det.boxes[0], region, atol=mask_pixel if from_mask else 1e-3)
        assert det.masks is not None and det.masks.shape == (1, h, w)
        truth = np.zeros((h, w), bool)
        truth[20:60, 30:90] = True
        inter = (det.masks[0] & truth).sum() / (det.masks[0] | truth).sum()
        assert inter > 0.9
        rle = encode_rle(det.masks[0])
        assert np.array_equal(decode_rle(rle), det.masks[0])


def test_postprocess_without_detections_is_empty_and_shaped():
    lb = Letterbox.fit(50, 40, 128)
    det = postprocess(
        np.full((4, 3), -9.0, np.float32),
        np.full((4, 4), 0.5, np.float32),
        np.zeros((4, 32, 32), np.float32),
        lb,
        0.5,
    )
    assert len(det) == 0 and det.boxes.shape == (0, 4) and det.masks.shape == (0, 40, 50)


# ---- COCO RLE --------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(h=st.integers(1, 60), w=st.integers(1, 60), seed=st.integers(0, 10_000))
def test_rle_decodes_to_the_same_mask(h, w, seed):
    mask = np.random.default_rng(seed).random((h, w)) < 0.3
    rle = encode_rle(mask)
    assert rle["size"] == [h, w] and isinstance(rle["counts"], str)
    assert np.array_equal(decode_rle(rle), mask)
    assert rle_area(rle) == mask.sum()


def test_rle_batch_equals_single_and_handles_edge_cases():
    rng = np.random.default_rng(1)
    masks = rng.random((3, 17, 23)) < 0.5
    masks[0] = False  # empty
    masks[1] = True  # full
    assert encode_rles(masks) == [encode_rle(m) for m in masks]
    assert encode_rles(np.zeros((0, 5, 5), bool)) == []
    strided = masks[2][:, ::2]  # non-contiguous input
    assert np.array_equal(decode_rle(encode_rle(strided)), strided)
    uncompressed = {"size": [2, 3], "counts": [1, 2, 3]}  # column-major runs: 0,1,1,0,0,0
    assert decode_rle(uncompressed).T.reshape(-1).tolist() == [0, 1, 1, 0, 0, 0]
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        encode_rle(masks)


def test_an_image_folder_lists_its_images_and_leaves_their_masks_out(tmp_path):
    """Benchmarks and export checks take a dataset folder as it is: a mask lying beside its image
    is not timed or checked as an image, a lone PNG photo is."""
    pixels = np.full((8, 8, 3), 120, np.uint8)
    (tmp_path / "cls").mkdir()
    for name in ("cls/a.jpg", "cls/a.png", "b.bmp", "c.png", "notes.txt"):
        path = tmp_path / name
        if name.endswith(".txt"):
            path.write_text("not an image")
        else:
            cv2.imwrite(str(path), pixels)
    found = [f.relative_to(tmp_path).as_posix() for f in image_files(tmp_path)]
    assert found == ["b.bmp", "c.png", "cls/a.jpg"]
    assert all(read_image(tmp_path / f).shape == (8, 8, 3) for f in found)
    assert image_files(tmp_path / "cls" / "a.jpg.missing") == []
