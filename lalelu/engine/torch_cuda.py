"""MoveNet on an NVIDIA GPU through PyTorch: the ONNX network and the decode captured in one CUDA graph.

Per frame, the camera's raw frame (RGB888 or I420, as it came from the socket into a pinned buffer of
`frame_buffer`) is copied to the GPU; one graph replay converts the colours, letterboxes (gpu_letterbox.py),
runs the network and the decode, and copies the 17 keypoints back into pinned host memory; one event
synchronization ends the frame: no per-frame image work on the CPU. A band's frames go through in batches
(a graph per batch size), and up to SLOTS batches at once, each on a CUDA stream of its own: the backend
launches a batch the moment its frames are in, while another still runs, and collects each when its event
says it is done (`launch_frames`, `frames_done`, `collect_frames`). `infer` (the benchmark's entry) takes
an already letterboxed image from the pinned `input` instead. `mode="eager"` runs the same steps op by op (the launch-bound baseline); `compile=True` lets torch.compile
fuse the small layers first (tens of seconds more at start, a quarter less GPU time per frame).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from lalelu.engine import WarmUpByInfer, check_model_path
from lalelu.engine.preprocess import LetterboxGeometry
from lalelu.errors import ModelError
from lalelu.frames import FrameFormat, PixelFormat
from lalelu.keypoints import NUM_KEYPOINTS

MAX_GEOMETRIES = 8  # a graph per camera geometry; an edge keeps its geometry, so more means a hostile client
# frames one replay infers together: graphs are captured per batch size up to the configured one
MAX_BATCH = 16
# batches in flight at once at most, each with its own stream, buffers and graphs; the backend uses
# [backend] batches_in_flight of them (free slots are a stack: at most n in flight only ever use the first n)
SLOTS = 4


class _Slot:
    """One batch in flight: its stream and events (GPU), its graph's state and frame count."""

    def __init__(self, torch, on_gpu: bool) -> None:
        self.stream = torch.cuda.Stream() if on_gpu else None
        # its graphs are captured on a stream of their own: cuBLAS keeps a workspace per stream, and graphs
        # captured on one shared capture stream would share it while two slots run side by side
        self.capture = torch.cuda.Stream() if on_gpu else None
        self.start = torch.cuda.Event(enable_timing=True) if on_gpu else None
        self.done = torch.cuda.Event(enable_timing=True) if on_gpu else None
        self.state: tuple | None = None  # the graph and buffers of the batch in flight: kept alive by it
        self.host_out: np.ndarray | None = None
        self.n = 0


PRECISIONS = ("fp32", "tf32", "fp16")
MODES = ("graph", "eager")


def _torch():
    try:
        import torch
    except ImportError as exc:
        raise ModelError(
            "engine torch-cuda needs PyTorch with CUDA and onnx: pip install 'lalelu-drums[gpu-torch]' "
            "on the backend, or choose engine litert"
        ) from exc
    return torch


class TorchCudaEngine(WarmUpByInfer):
    """One class though long (~280 lines): the graphs, slots, streams and pinned buffers live in one CUDA
    context, are captured against each other's memory and must be freed together (a ninth geometry clears
    them all after one synchronize); pieces of it on their own would each have to know all of that."""

    name = "torch-cuda"

    def __init__(
        self,
        model: Path,
        precision: str = "fp32",
        mode: str = "graph",
        device: str = "cuda",
        compile: bool = False,
    ) -> None:
        torch = _torch()
        if precision not in PRECISIONS or mode not in MODES:
            raise ModelError(
                f"torch-cuda: precision {precision!r} / mode {mode!r}: choose precision from "
                f"{', '.join(PRECISIONS)} and mode from {', '.join(MODES)}"
            )
        on_gpu = device.startswith("cuda")
        if on_gpu and not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ModelError(
                f"engine torch-cuda: CUDA is not available (torch {torch.__version__}, {build}, "
                f"{torch.cuda.device_count()} GPUs visible): run it on the backend with an NVIDIA GPU and "
                "driver, install a CUDA build of torch, or choose engine litert"
            )
        if mode == "graph" and not on_gpu:
            raise ModelError("torch-cuda: CUDA graphs need a GPU; use mode eager on the CPU")
        from lalelu.engine.movenet_decode import MoveNetDecoder
        from lalelu.engine.onnx_torch import movenet_network

        path = check_model_path(Path(model), "MoveNet ONNX file (make one: lalelu convert MODEL --to onnx)")
        net, shape, dtype, constants = movenet_network(path)
        self.device = torch.device(device)
        self.precision, self.mode, self.model_path = precision, mode, path
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once, at warm-up
        # fp32 means fp32: TF32 convolutions (PyTorch's default, here "tf32") are faster on an H100 but flip
        # argmax cells of flat heatmaps (1.7 px, 0.05 score on the astronaut photo)
        torch.backends.cudnn.allow_tf32 = precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        self._net = net.to(self.device).eval()
        if precision == "fp16":
            self._net.half()
        tdtype = torch.from_numpy(np.zeros(0, dtype)).dtype
        self._host_in = torch.zeros(shape, dtype=tdtype, pin_memory=on_gpu)
        self.input = self._host_in.numpy()  # the preprocessor writes straight into pinned memory
        self._dev_in = torch.zeros((1, *shape), dtype=tdtype, device=self.device)
        self._host_out = torch.zeros((NUM_KEYPOINTS, 3), dtype=torch.float32, pin_memory=on_gpu)
        self._out = self._host_out.numpy()
        with torch.inference_mode():
            heads = self._net(self._dev_in)
        sizes = [tuple(h.shape[1:]) for h in heads]
        grid = sizes[0][1:]
        if [s[0] for s in sizes] != [1, NUM_KEYPOINTS, 2 * NUM_KEYPOINTS, 2 * NUM_KEYPOINTS] or any(
            s[1:] != grid for s in sizes
        ):
            raise ModelError(f"{path}: head shapes {sizes} are not MoveNet's (1, 17, 34, 34 channels)")
        self._decode = MoveNetDecoder(grid[0], grid[1], self.device, constants)
        self._forward = self._network_and_decode
        if compile:
            # inductor fuses the elementwise layers into their neighbours: 258 -> 182 kernels on an H100
            self._forward = torch.compile(self._network_and_decode, mode="default", fullgraph=True)
        self.compiled = compile
        # raw frames in batches: a graph per batch size; compiled, one frame at a time (inductor would
        # compile the network again for every batch size, tens of seconds each on a cold cache)
        self.max_batch = 1 if compile else MAX_BATCH
        self._graph = None
        self._torch = torch
        self._frame_graphs: dict[tuple[int, int, int, int, int], tuple] = {}
        self._geometries: dict[tuple[int, int, int], None] = {}  # those with graphs, oldest first
        self._pinned: dict[int, object] = {}  # address of a frame_buffer array -> its pinned tensor
        self.slots = SLOTS
        self._slots = [_Slot(torch, on_gpu) for _ in range(SLOTS)]
        self._free = list(range(SLOTS - 1, -1, -1))  # popped from the end: slot 0 first
        if on_gpu:
            self._start = torch.cuda.Event(enable_timing=True)
            self._done = torch.cuda.Event(enable_timing=True)
            self._timed = (self._start, self._done)  # the events of the last replay collected
        if mode == "graph":
            self._graph = self._capture(self._step)

    def _network_and_decode(self, x):
        """(B, H, W, 3) model input -> (B, 17, 3) keypoints."""
        c, h, r, o = [t.float() for t in self._net(x)]
        return self._decode(c, h, r, o)

    def _step(self) -> None:
        """Copy in, network, decode, copy out: queued on the current stream, no host synchronization."""
        self._dev_in[0].copy_(self._host_in, non_blocking=True)
        self._host_out.copy_(self._forward(self._dev_in)[0], non_blocking=True)

    def _capture(self, step: Callable[[], None], stream=None):
        """`step` captured as a CUDA graph on `stream` (a new one if None), after warm-up runs on it."""
        torch = self._torch
        side = stream if stream is not None else torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(side):
            for _ in range(3):  # cuDNN's benchmark and lazy allocations happen here, not during capture
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph, stream=side):
            step()
        torch.cuda.synchronize()
        return graph

    def _run(self, step: Callable[[], None], graph, host_out: np.ndarray, out: np.ndarray) -> None:
        """One replay of `graph` (or `step`), timed by CUDA events on a GPU and waited for; the keypoints
        from `host_out` into `out`."""
        on_gpu = self.device.type == "cuda"
        if on_gpu:
            self._start.record()
        if graph is not None:
            graph.replay()
        else:
            with self._torch.inference_mode():
                step()
        if on_gpu:
            self._done.record()
            self._done.synchronize()  # the one synchronization per replay
            self._timed = (self._start, self._done)
        out[:] = host_out

    def frame_buffer(self, fmt: PixelFormat, width: int, height: int) -> np.ndarray:
        """A buffer for one raw frame (the socket reads into it), in pinned memory on a GPU."""
        t = self._torch.empty(
            FrameFormat(fmt, width, height).nbytes,
            dtype=self._torch.uint8,
            pin_memory=self.device.type == "cuda",
        )
        array = t.numpy().reshape(FrameFormat(fmt, width, height).shape)  # holds t: memory outlives the dict
        if len(self._pinned) >= 4 * MAX_GEOMETRIES:  # connections come and go; forget the oldest buffer
            del self._pinned[next(iter(self._pinned))]
        self._pinned[array.ctypes.data] = t
        return array

    def _frame_graph(self, fmt: PixelFormat, width: int, height: int, n: int, slot: int) -> tuple:
        """(device raw frames, step, graph or None, host keypoints) for `n` frames of one camera geometry in
        one slot; captured at the first such batch, or ahead by `prepare_batches`."""
        from lalelu.engine.gpu_letterbox import TorchLetterbox

        torch = self._torch
        on_gpu = self.device.type == "cuda"
        geometry = (int(fmt), width, height)
        if geometry not in self._geometries:
            if len(self._geometries) >= MAX_GEOMETRIES:
                # a camera keeps its geometry: this many is a hostile client. Start over, after every batch
                # in flight has finished with the buffers and graphs that go
                if on_gpu:
                    torch.cuda.synchronize()
                self._frame_graphs.clear()
                self._geometries.clear()
            self._geometries[geometry] = None
        raw = torch.zeros((n, FrameFormat(fmt, width, height).nbytes), dtype=torch.uint8, device=self.device)
        in_h, in_w = self._dev_in.shape[1:3]
        dev_in = torch.zeros((n, in_h, in_w, 3), dtype=self._dev_in.dtype, device=self.device)
        host_out = torch.zeros((n, NUM_KEYPOINTS, 3), dtype=torch.float32, pin_memory=on_gpu)
        letterbox = TorchLetterbox(fmt, LetterboxGeometry(width, height, in_w, in_h), self.device)

        if self.compiled:
            # letterbox, network and decode compiled as one: its casts, permutes and rounding fuse into
            # the network's first kernels (one compilation per geometry, at start for [camera]'s)
            dtype = self._dev_in.dtype
            fused = self._torch.compile(
                lambda frame: self._network_and_decode(letterbox.image(frame, dtype)), fullgraph=True
            )

            def step() -> None:
                host_out.copy_(fused(raw), non_blocking=True)

        else:

            def step() -> None:
                letterbox(raw, dev_in)
                host_out.copy_(self._forward(dev_in), non_blocking=True)

        graph = self._capture(step, self._slots[slot].capture) if self.mode == "graph" else None
        state = (raw, step, graph, host_out.numpy())
        self._frame_graphs[(int(fmt), width, height, n, slot)] = state
        return state

    def prepare_batches(
        self, fmt: PixelFormat, width: int, height: int, max_batch: int, slots: int = SLOTS
    ) -> None:
        """Capture the graphs of every batch size up to `max_batch` in the first `slots` slots now: not at
        a band's first full batch."""
        for slot in range(min(slots, SLOTS)):
            for n in range(1, min(max_batch, self.max_batch) + 1):
                if (int(fmt), width, height, n, slot) not in self._frame_graphs:
                    self._frame_graph(fmt, width, height, n, slot)

    def launch_frames(self, frames: Sequence[np.ndarray], fmt: PixelFormat, width: int, height: int) -> int:
        """Start inferring raw camera frames of one geometry (at most `max_batch`) in a free slot, and return
        the slot; nothing waits for the GPU. The frames' buffers must stay as they are until the slot is
        collected. Off the GPU the work is done here."""
        if not self._free:
            raise RuntimeError(f"torch-cuda: all {SLOTS} slots are in flight; collect one first")
        torch = self._torch
        n = len(frames)
        index = self._free.pop()
        slot = self._slots[index]
        try:
            key = (int(fmt), width, height, n, index)
            state = self._frame_graphs.get(key) or self._frame_graph(fmt, width, height, n, index)
            raw, step, graph, host_out = state
            with contextlib.ExitStack() as on_stream:
                if slot.stream is not None:
                    on_stream.enter_context(torch.cuda.stream(slot.stream))
                    slot.start.record()  # type: ignore[union-attr]
                for row, frame in zip(raw, frames, strict=False):
                    host = self._pinned.get(frame.ctypes.data)
                    if host is None:  # not from frame_buffer: pageable memory, copied synchronously
                        host = torch.from_numpy(np.ascontiguousarray(frame).reshape(-1))
                    row.copy_(host.view(-1), non_blocking=True)  # type: ignore[attr-defined]
                if graph is not None:
                    graph.replay()
                else:
                    with torch.inference_mode():
                        step()
                if slot.done is not None:
                    slot.done.record()
        except BaseException:
            self._free.append(index)
            raise
        slot.state, slot.host_out, slot.n = state, host_out, n
        return index

    def frames_done(self, index: int) -> bool:
        """Whether the slot's batch has finished (never blocks)."""
        done = self._slots[index].done
        return done is None or bool(done.query())

    def collect_frames(self, index: int, out: np.ndarray) -> int:
        """The slot's keypoints into out[:n] (rows y, x, score normalized to the letterboxed input), waiting
        for its batch if it has not finished; frees the slot and returns n."""
        slot = self._slots[index]
        try:
            if slot.done is not None:
                slot.done.synchronize()  # at once when frames_done said so
                self._timed = (slot.start, slot.done)
            assert slot.host_out is not None
            out[: slot.n] = slot.host_out
            return slot.n
        finally:
            slot.state = None
            self._free.append(index)

    def infer_frames(
        self, frames: Sequence[np.ndarray], fmt: PixelFormat, width: int, height: int, out: np.ndarray
    ) -> None:
        """Raw camera frames of one geometry (at most `max_batch`) -> out[:n] (n, 17, 3) rows (y, x, score)
        normalized to the letterboxed input: one replay for all of them, waited for."""
        self.collect_frames(self.launch_frames(frames, fmt, width, height), out)

    def infer_frame(
        self, frame: np.ndarray, fmt: PixelFormat, width: int, height: int, out: np.ndarray
    ) -> None:
        """Raw camera frame -> (17, 3) rows (y, x, score) normalized to the letterboxed input."""
        self.infer_frames((frame,), fmt, width, height, out.reshape(1, NUM_KEYPOINTS, 3))

    def infer(self, out: np.ndarray) -> None:
        self._run(self._step, self._graph, self._out, out)

    def last_device_ms(self) -> float:
        """GPU time of the last replay waited for or collected (copy in to copy out), from CUDA events;
        NaN off the GPU."""
        if self.device.type != "cuda":
            return float("nan")
        start, done = self._timed
        return float(start.elapsed_time(done))

    def close(self) -> None:
        self._graph = None
        del self._net
        if self.device.type == "cuda":
            self._torch.cuda.empty_cache()
