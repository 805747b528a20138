"""The One Euro filter (Casiez, Roussel, Vogel, CHI 2012): little lag when moving fast, little jitter at rest."""

from __future__ import annotations

import math


class OneEuro:
    def __init__(self, min_cutoff_hz: float = 1.0, beta: float = 0.05, d_cutoff_hz: float = 1.0) -> None:
        self.min_cutoff = min_cutoff_hz
        self.beta = beta
        self.d_cutoff = d_cutoff_hz
        self.reset()

    def reset(self) -> None:
        self._x = 0.0
        self._dx = 0.0
        self._t = -1

    @staticmethod
    def _alpha(cutoff: float, dt: float) -> float:
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, x: float, t_ns: int) -> float:
        if self._t < 0 or t_ns <= self._t:
            self._x, self._dx, self._t = x, 0.0, t_ns
            return x
        dt = (t_ns - self._t) * 1e-9
        dx = (x - self._x) / dt
        a_d = self._alpha(self.d_cutoff, dt)
        self._dx += a_d * (dx - self._dx)
        cutoff = self.min_cutoff + self.beta * abs(self._dx)
        self._x += self._alpha(cutoff, dt) * (x - self._x)
        self._t = t_ns
        return self._x
