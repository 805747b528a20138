"""TensorFlow 2 SavedModel engine, called through signatures['serving_default'] as MoveNet Thunder ships."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lalelu.engine import WarmUpByInfer, check_model_path, check_output_shape
from lalelu.errors import ModelError


class SavedModelEngine(WarmUpByInfer):
    name = "tf-savedmodel"

    def __init__(self, model: Path) -> None:
        try:
            import tensorflow as tf
        except ImportError as exc:
            raise ModelError("engine tf-savedmodel needs TensorFlow: pip install 'lalelu-drums[tf]'") from exc
        path = check_model_path(Path(model), "TF2 SavedModel directory")
        try:
            loaded = tf.saved_model.load(str(path))
            fn = loaded.signatures["serving_default"]
        except (OSError, KeyError, ValueError) as exc:
            raise ModelError(
                f"{path} is not a SavedModel with a 'serving_default' signature ({exc})"
            ) from exc
        _, kwargs = fn.structured_input_signature
        if len(kwargs) != 1:
            raise ModelError(f"{path}: serving_default takes {len(kwargs)} inputs, MoveNet takes one image")
        ((self._input_name, spec),) = kwargs.items()
        shape = tuple(spec.shape)
        if len(shape) != 4 or shape[3] != 3 or shape[1] is None or shape[2] is None:
            raise ModelError(f"{path}: input shape {shape} is not [1, H, W, 3] with a fixed size")
        outputs = fn.structured_outputs
        self._output_name = "output_0" if "output_0" in outputs else next(iter(outputs))
        check_output_shape(tuple(outputs[self._output_name].shape), path)
        self._tf, self._fn, self._loaded = tf, fn, loaded
        self.input = np.zeros(shape[1:], dtype=spec.dtype.as_numpy_dtype)
        self.model_path = path

    def infer(self, out: np.ndarray) -> None:
        result = self._fn(**{self._input_name: self._tf.constant(self.input[None])})
        out[:] = result[self._output_name].numpy().reshape(17, 3)

    def close(self) -> None:
        self._fn = None
