"""The tf-savedmodel engine on a small SavedModel with MoveNet Thunder's signature, built here."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="needs tensorflow-cpu (installed by .ci/run)")

from lalelu.engine import create_engine  # noqa: E402


class ThunderShaped(tf.Module):
    """int32 [1, 256, 256, 3] -> output_0 float32 [1, 1, 17, 3], a deterministic function of the pixels."""

    @tf.function(input_signature=[tf.TensorSpec([1, 256, 256, 3], tf.int32, name="input")])
    def serve(self, input):
        img = tf.cast(input, tf.float32) / 255.0
        rows = tf.reduce_mean(img, axis=[2, 3])[0]  # (256,)
        y = tf.reshape(rows[:17], [1, 1, 17, 1])
        x = tf.reshape(rows[17:34], [1, 1, 17, 1])
        s = tf.reshape(rows[34:51], [1, 1, 17, 1])
        return {"output_0": tf.concat([y, x, s], axis=-1)}


@pytest.fixture(scope="module")
def thunder_like(tmp_path_factory):
    path = tmp_path_factory.mktemp("sm") / "thunder_like"
    m = ThunderShaped()
    tf.saved_model.save(m, str(path), signatures={"serving_default": m.serve})
    return path, m


def test_savedmodel_engine_reads_size_and_dtype_from_the_model(thunder_like):
    path, module = thunder_like
    engine = create_engine("tf-savedmodel", path)
    assert engine.input.shape == (256, 256, 3)
    assert engine.input.dtype == np.int32
    engine.input[:] = np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.int32)
    out = np.zeros((17, 3), np.float32)
    engine.infer(out)
    expected = module.serve(tf.constant(engine.input[None]))["output_0"].numpy().reshape(17, 3)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_savedmodel_engine_with_letterbox(thunder_like, astronaut):
    from lalelu.cli.pose_image import estimate_pose

    engine = create_engine("tf-savedmodel", thunder_like[0])
    kp = estimate_pose(engine, astronaut)
    assert kp.shape == (17, 3)
    assert np.all(kp[:, 2] > 0)  # mean brightness rows of a real photo


def test_not_a_savedmodel(tmp_path):
    from lalelu.errors import ModelError

    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="not a SavedModel"):
        create_engine("tf-savedmodel", tmp_path / "empty")
