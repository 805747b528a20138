"""LiteRT (TFLite) engine: the bundled int8 Lightning on the CPU with XNNPACK, or a Coral Edge TPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lalelu.engine import WarmUpByInfer, check_model_path, check_output_shape
from lalelu.errors import ModelError
from lalelu.keypoints import NUM_KEYPOINTS

EDGETPU_LIBRARY = "libedgetpu.so.1"


class LiteRTEngine(WarmUpByInfer):
    name = "litert"

    def __init__(self, model: Path, threads: int = 2, delegate: str = "") -> None:
        from ai_edge_litert.interpreter import Interpreter, load_delegate

        path = check_model_path(Path(model), "MoveNet .tflite file")
        delegates = []
        if delegate == "edgetpu":
            try:
                delegates.append(load_delegate(EDGETPU_LIBRARY))
            except (ValueError, OSError) as exc:
                raise ModelError(
                    f"cannot load the Edge TPU delegate ({EDGETPU_LIBRARY}): {exc}; install libedgetpu1-std "
                    'and plug in the Coral, or set [engine] delegate = ""'
                ) from exc
        try:
            self._it = Interpreter(
                model_path=str(path), num_threads=threads, experimental_delegates=delegates or None
            )
            self._it.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(
                f"{path} is not a usable TFLite model ({exc}); check the file or re-download it"
            ) from exc
        inp = self._it.get_input_details()[0]
        out = self._it.get_output_details()[0]
        check_output_shape(tuple(out["shape"]), path)
        shape = tuple(int(s) for s in inp["shape"])
        if len(shape) != 4 or shape[3] != 3:
            raise ModelError(f"{path} takes input shape {shape}, expected [1, H, W, 3]")
        self._in_index, self._out_index = inp["index"], out["index"]
        self.input = np.zeros(shape[1:], dtype=inp["dtype"])
        self._batched = self.input[None]  # a view: set_tensor copies from our buffer
        self.model_path = path

    def infer(self, out: np.ndarray) -> None:
        self._it.set_tensor(self._in_index, self._batched)
        self._it.invoke()
        out[:] = self._it.get_tensor(self._out_index).reshape(NUM_KEYPOINTS, 3)

    def close(self) -> None:
        del self._it
