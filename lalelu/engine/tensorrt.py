"""Native TensorRT engine (TensorRT 10 Python API, tensors by name, execute_async_v3).

Written against the documented API; it cannot run on a machine without an NVIDIA GPU and `tensorrt`.
Device memory and copies go through cuda-python's runtime bindings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lalelu.engine import WarmUpByInfer, check_model_path, check_output_shape
from lalelu.engine.manifests import check_manifest, cuda_gpu_name
from lalelu.errors import ModelError
from lalelu.keypoints import NUM_KEYPOINTS


def _cuda_check(result: tuple) -> Any:
    err, *rest = result
    if int(err) != 0:
        raise ModelError(f"CUDA call failed with error {err}; is the NVIDIA driver loaded (nvidia-smi)?")
    return rest[0] if rest else None


class TensorRTEngine(WarmUpByInfer):
    name = "tensorrt"

    def __init__(self, model: Path) -> None:
        try:
            import tensorrt as trt
            from cuda.bindings import runtime as cudart
        except ImportError as exc:
            raise ModelError(
                "engine tensorrt needs the `tensorrt` and `cuda-python` packages and an NVIDIA GPU "
                f"({exc}); on a machine without them use --engine litert"
            ) from exc
        path = check_model_path(Path(model), "serialized TensorRT engine")
        self._cudart = cudart
        if int(cudart.cudaGetDeviceCount()[0]) != 0 or cudart.cudaGetDeviceCount()[1] == 0:
            raise ModelError("no CUDA GPU is visible: the tensorrt engine needs one; use --engine litert")
        # an engine only runs on the GPU and TensorRT it was built for
        check_manifest(path, cuda_gpu_name(cudart), trt.__version__)
        logger = trt.Logger(trt.Logger.WARNING)
        engine = trt.Runtime(logger).deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise ModelError(
                f"{path} could not be deserialized: rebuild it with `lalelu convert` on this GPU"
            )
        self._engine, self._ctx = engine, engine.create_execution_context()
        self._stream = _cuda_check(cudart.cudaStreamCreate())
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(f"{path} has inputs {inputs} and outputs {outputs}; MoveNet has one of each")
        in_shape = tuple(engine.get_tensor_shape(inputs[0]))
        out_shape = tuple(engine.get_tensor_shape(outputs[0]))
        check_output_shape(out_shape, path)
        self.input = np.zeros(in_shape[1:], dtype=trt.nptype(engine.get_tensor_dtype(inputs[0])))
        self._out = np.zeros(out_shape, dtype=np.float32)
        self._d_in = _cuda_check(cudart.cudaMalloc(self.input.nbytes))
        self._d_out = _cuda_check(cudart.cudaMalloc(self._out.nbytes))
        self._ctx.set_tensor_address(inputs[0], int(self._d_in))
        self._ctx.set_tensor_address(outputs[0], int(self._d_out))
        self.model_path = path

    def infer(self, out: np.ndarray) -> None:
        rt = self._cudart
        h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _cuda_check(
            rt.cudaMemcpyAsync(self._d_in, self.input.ctypes.data, self.input.nbytes, h2d, self._stream)
        )
        self._ctx.execute_async_v3(int(self._stream))
        _cuda_check(
            rt.cudaMemcpyAsync(self._out.ctypes.data, self._d_out, self._out.nbytes, d2h, self._stream)
        )
        _cuda_check(rt.cudaStreamSynchronize(self._stream))
        out[:] = self._out.reshape(NUM_KEYPOINTS, 3)

    def close(self) -> None:
        for ptr in (self._d_in, self._d_out):
            self._cudart.cudaFree(ptr)
        self._cudart.cudaStreamDestroy(self._stream)
