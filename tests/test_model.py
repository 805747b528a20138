"""The real bundled model on the real astronaut photo."""

import numpy as np
import pytest
from support import REFERENCE

from lalelu.cli.pose_image import estimate_pose
from lalelu.engine import create_engine
from lalelu.errors import LaleluError, ModelError
from lalelu.keypoints import KEYPOINT_INDEX


def test_engine_reports_model_metadata(litert_engine):
    assert litert_engine.input.shape == (192, 192, 3)
    assert litert_engine.input.dtype == np.uint8


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_astronaut_keypoints_match_reference(litert_engine, astronaut, name):
    kp = estimate_pose(litert_engine, astronaut)
    x, y, score = kp[KEYPOINT_INDEX[name]]
    rx, ry = REFERENCE[name]
    assert np.hypot(x - rx, y - ry) <= 15, (name, x, y)
    assert score > 0.1


def test_keypoints_follow_a_non_square_frame(litert_engine, astronaut):
    """Padding the photo into a wide frame moves the keypoints by exactly the padding."""
    wide = np.zeros((512, 812, 3), np.uint8)
    wide[:, 150:662] = astronaut
    kp = estimate_pose(litert_engine, wide)
    rx, ry = REFERENCE["nose"]
    x, y, _ = kp[KEYPOINT_INDEX["nose"]]
    assert np.hypot(x - (rx + 150), y - ry) <= 15


def test_yuv420_frame_gives_the_same_pose(litert_engine, astronaut):
    import cv2

    from lalelu.engine.estimator import PoseEstimator
    from lalelu.frames import PixelFormat

    yuv = cv2.cvtColor(astronaut, cv2.COLOR_RGB2YUV_I420)
    out = np.zeros((17, 3), np.float32)
    PoseEstimator(litert_engine).estimate(yuv, PixelFormat.YUV420, 512, 512, out)
    for name, (rx, ry) in REFERENCE.items():
        x, y, _ = out[KEYPOINT_INDEX[name]]
        assert np.hypot(x - rx, y - ry) <= 15, name


def test_missing_model_says_what_to_do(tmp_path):
    with pytest.raises(ModelError, match=r"does not exist: set \[engine\] model"):
        create_engine("litert", tmp_path / "nope.tflite")


def test_wrong_model_file_is_refused(tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"this is not a flatbuffer" * 10)
    with pytest.raises(ModelError, match="not a usable TFLite model"):
        create_engine("litert", bad)


def test_tensorrt_without_tensorrt_is_a_clear_error(tmp_path):
    engine_file = tmp_path / "m.engine"
    engine_file.write_bytes(b"x")
    with pytest.raises(ModelError, match="tensorrt"):
        create_engine("tensorrt", engine_file)


def test_pose_command_prints_json_in_image_pixels_and_draws(tmp_path):
    import json
    import subprocess

    import cv2
    from support import lalelu_cmd

    photo = tmp_path / "astronaut.png"
    cv2.imwrite(str(photo), cv2.cvtColor(__import__("skimage").data.astronaut(), cv2.COLOR_RGB2BGR))
    out = tmp_path / "annotated.png"
    r = subprocess.run(
        lalelu_cmd("pose", str(photo), "--json", "-", "--out", str(out)), capture_output=True, timeout=60
    )
    assert r.returncode == 0, r.stderr.decode()
    kps = json.loads(r.stdout)["keypoints"]
    assert [k["name"] for k in kps][:3] == ["nose", "left_eye", "right_eye"] and len(kps) == 17
    assert abs(kps[0]["x"] - REFERENCE["nose"][0]) < 15 and abs(kps[0]["y"] - REFERENCE["nose"][1]) < 15
    drawn = cv2.imread(str(out))
    assert drawn.shape == (512, 512, 3)
    assert not np.array_equal(drawn, cv2.imread(str(photo)))  # the skeleton is on it


def test_pose_command_on_a_missing_image_is_clear(tmp_path):
    import subprocess

    from support import lalelu_cmd

    r = subprocess.run(lalelu_cmd("pose", str(tmp_path / "nope.jpg")), capture_output=True, timeout=60)
    assert r.returncode == 2
    assert "nope.jpg does not exist" in r.stderr.decode() and "Traceback" not in r.stderr.decode()


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height, with one tiny compressed row after it."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_pose_command_refuses_bombs_and_pictures_too_small_for_a_person(tmp_path):
    import subprocess

    import cv2
    from support import lalelu_cmd

    from lalelu.cli.pose_image import read_rgb

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_declaring(100_000, 100_000))
    r = subprocess.run(lalelu_cmd("pose", str(bomb)), capture_output=True, timeout=60)
    assert r.returncode == 2, r.stderr.decode()
    assert "declares 100000x100000 pixels" in r.stderr.decode() and "Traceback" not in r.stderr.decode()

    _, jpeg = cv2.imencode(".jpg", np.full((40, 60, 3), 128, np.uint8))
    data = bytearray(jpeg.tobytes())
    sof = data.index(b"\xff\xc0")
    assert data[sof + 5 : sof + 9] == (40).to_bytes(2, "big") + (60).to_bytes(2, "big")
    data[sof + 5 : sof + 9] = (60000).to_bytes(2, "big") * 2  # the frame header now declares 60000x60000
    (tmp_path / "bomb.jpg").write_bytes(bytes(data))
    with pytest.raises(LaleluError, match="declares 60000x60000 pixels"):
        read_rgb(tmp_path / "bomb.jpg")

    for w, h in ((512, 1), (1, 1), (31, 400)):
        path = tmp_path / f"{w}x{h}.png"
        cv2.imwrite(str(path), np.zeros((h, w, 3), np.uint8))
        with pytest.raises(LaleluError, match=f"is {w}x{h} pixels: too small to hold a person"):
            read_rgb(path)
    cv2.imwrite(str(tmp_path / "32x32.png"), np.zeros((32, 32, 3), np.uint8))
    assert read_rgb(tmp_path / "32x32.png").shape == (32, 32, 3)
    with pytest.raises(LaleluError, match="is a folder"):
        read_rgb(tmp_path)
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(LaleluError, match=r"cannot read .* as an image"):
        read_rgb(tmp_path / "notes.png")
