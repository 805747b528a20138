"""MoveNet single-pose decode on the four heads, in PyTorch, without a host round trip.

The same steps the TFLite model runs after its network (read off its graph):
1. the person's center: argmax of the center heatmap weighted by 1 / (distance to the frame center + 1.8);
2. each keypoint's regressed position: the regression head at that center, added to it;
3. the keypoint: argmax of its heatmap divided by (distance to the regressed position + 1.8);
4. score = heatmap there; position = (cell + offset head there) / grid size.
Only tensor operations (argmax, gather, arithmetic): it runs on the CPU for tests and inside a CUDA graph.
"""

from __future__ import annotations

import numpy as np
import torch

DISTANCE_BIAS = 1.8  # the TFLite graph's constant (add_1/y)


class MoveNetDecoder:
    """Constants for one grid size on one device, built once, so that decoding allocates no constants."""

    def __init__(
        self,
        grid_h: int,
        grid_w: int,
        device: torch.device | str = "cpu",
        model_constants: dict[str, np.ndarray] | None = None,
    ) -> None:
        """`model_constants`: the model file's own grid_y, grid_x and center_weight maps (an int8 model's
        are quantized); without them, the exact ones."""
        ys = torch.arange(grid_h, dtype=torch.float32, device=device).view(grid_h, 1)
        xs = torch.arange(grid_w, dtype=torch.float32, device=device).view(1, grid_w)
        self.h, self.w = grid_h, grid_w
        self.grid_y = ys.expand(grid_h, grid_w).contiguous()
        self.grid_x = xs.expand(grid_h, grid_w).contiguous()
        center_dist = torch.sqrt((self.grid_y - grid_h / 2) ** 2 + (self.grid_x - grid_w / 2) ** 2)
        self.center_weight = 1.0 / (center_dist + DISTANCE_BIAS)
        for name, arr in (model_constants or {}).items():
            if arr.shape != (grid_h, grid_w):
                raise ValueError(f"decode constant {name} has shape {arr.shape}, grid is {grid_h}x{grid_w}")
            setattr(self, name, torch.tensor(arr, dtype=torch.float32, device=device))

    def __call__(
        self, center: torch.Tensor, heatmap: torch.Tensor, regress: torch.Tensor, offset: torch.Tensor
    ) -> torch.Tensor:
        """NCHW heads of B images -> (B, 17, 3) rows (y, x, score), normalized to the model's input. Each
        image is decoded on its own: a batch gives each image the rows it would get alone."""
        b, h, w = center.shape[0], self.h, self.w
        # flat gathers with index tensors only: no index ever becomes a Python int (a host sync, which
        # would also break CUDA graph capture)
        c = torch.argmax((center[:, 0] * self.center_weight).reshape(b, h * w), dim=1)  # (B,)
        cy = torch.div(c, w, rounding_mode="floor")
        cx = c - cy * w
        reg = regress.reshape(b, 34, h * w).gather(2, c.view(b, 1, 1).expand(b, 34, 1)).view(b, 17, 2)
        ry = (cy.view(b, 1) + reg[:, :, 0]).view(b, 17, 1, 1)
        rx = (cx.view(b, 1) + reg[:, :, 1]).view(b, 17, 1, 1)
        dist = torch.sqrt((self.grid_y - ry) ** 2 + (self.grid_x - rx) ** 2)
        best = torch.argmax((heatmap / (dist + DISTANCE_BIAS)).reshape(b, 17, h * w), dim=2).view(b, 17, 1)
        ky = torch.div(best, w, rounding_mode="floor")
        kx = best - ky * w
        score = heatmap.reshape(b, 17, h * w).gather(2, best)
        off = offset.reshape(b, 17, 2, h * w).gather(3, best.view(b, 17, 1, 1).expand(b, 17, 2, 1))
        y = (ky + off[:, :, 0]) / h
        x = (kx + off[:, :, 1]) / w
        return torch.cat((y, x, score), dim=2)
