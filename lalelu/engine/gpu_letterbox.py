"""Colour conversion and letterbox as tensor operations, so a GPU engine takes the camera's raw frame.

The CPU path (preprocess.Letterbox) is cv2: I420 -> RGB (BT.601, limited range), then INTER_AREA when
shrinking, INTER_LINEAR when enlarging, into a zeroed canvas. Here the same arithmetic: the resize is two
small weight matrices (rows, then columns), each row holding cv2's weights for one output pixel and the
padding rows zero, so one `A_h @ img @ A_w^T` per channel resizes and letterboxes at once. Inside a CUDA
graph it is three kernels; the result matches cv2 to rounding (tests/test_torch_engine.py).
"""

from __future__ import annotations

import numpy as np
import torch

from lalelu.engine.preprocess import LetterboxGeometry
from lalelu.frames import PixelFormat


def resize_weights(src: int, dst: int, pad: int, size: int) -> np.ndarray:
    """(size, src) float64: output pixel pad+i gets source weights of cv2's resize to `dst` pixels."""
    w = np.zeros((size, src))
    s = src / dst
    for i in range(dst):
        row = w[pad + i]
        if s >= 1:  # INTER_AREA: the mean over the output pixel's footprint [i*s, (i+1)*s)
            lo, hi = i * s, (i + 1) * s
            for j in range(int(np.floor(lo)), min(src, int(np.ceil(hi)))):
                row[j] = (min(hi, j + 1) - max(lo, j)) / s
        else:  # INTER_LINEAR with half-pixel centres, edges clamped
            x = max((i + 0.5) * s - 0.5, 0.0)
            j = min(int(np.floor(x)), src - 1)
            f = x - j
            row[j] += 1 - f
            row[min(j + 1, src - 1)] += f
    return w


class TorchLetterbox:
    """Raw frames (device uint8 (B, payload), as the cameras sent them) -> the model's (B, in_h, in_w, 3)
    input; each frame of a batch converted on its own, as it would be alone."""

    def __init__(self, fmt: PixelFormat, geometry: LetterboxGeometry, device: torch.device) -> None:
        g = geometry
        self.fmt = fmt
        self.rows = torch.from_numpy(resize_weights(g.frame_h, g.new_h, g.pad_y, g.in_h)).float().to(device)
        self.cols_t = (
            torch.from_numpy(resize_weights(g.frame_w, g.new_w, g.pad_x, g.in_w).T.copy()).float().to(device)
        )
        self.w, self.h = g.frame_w, g.frame_h

    def rgb(self, raw: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float RGB in 0..255."""
        n, h, w = raw.shape[0], self.h, self.w
        if self.fmt == PixelFormat.RGB888:
            return raw.view(n, h, w, 3).permute(0, 3, 1, 2).float()
        flat = raw.view(n, -1)
        y = flat[:, : h * w].view(n, h, w).float()
        u = flat[:, h * w : h * w * 5 // 4].view(n, h // 2, w // 2).float()
        v = flat[:, h * w * 5 // 4 :].view(n, h // 2, w // 2).float()
        u = u.repeat_interleave(2, 1).repeat_interleave(2, 2) - 128.0
        v = v.repeat_interleave(2, 1).repeat_interleave(2, 2) - 128.0
        c = (y - 16.0).clamp_(min=0.0) * 1.164
        r = c + 1.596 * v
        g = c - 0.813 * v - 0.391 * u
        b = c + 2.018 * u
        return torch.stack((r, g, b), dim=1).clamp_(0.0, 255.0).round_()

    def image(self, raw: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The letterboxed frames (B, in_h, in_w, 3) in `dtype`, out of place (torch.compile fuses it)."""
        resized = self.rows @ self.rgb(raw) @ self.cols_t  # (B, 3, in_h, in_w)
        return resized.round().clamp(0.0, 255.0).permute(0, 2, 3, 1).to(dtype)

    def __call__(self, raw: torch.Tensor, out: torch.Tensor) -> None:
        """Write the letterboxed frames into `out` (B, in_h, in_w, 3), in out's dtype."""
        out.copy_(self.image(raw, out.dtype))
