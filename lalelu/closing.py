"""The one resource shape of cameras, engines and sound outputs: `with thing:` closes it however the block
ends (a camera a failed process still holds blocks the next one; an engine holds GPU memory; an output
must turn its notes off)."""

from __future__ import annotations

from typing import Self


class Closing:
    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
