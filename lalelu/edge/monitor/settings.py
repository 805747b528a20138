"""What the monitor's process is started with, typed on both sides of the process boundary: the edge's
[monitor] section (checked when the edge loaded it), the CPUs the monitor keeps off (the edge's), and the
page's description. It crosses on the process's stdin as JSON, so the token is never in argv (`ps`)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from lalelu.config import MonitorConfig


@dataclass(frozen=True)
class MonitorSettings:
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    avoid_cpus: tuple[int, ...] = ()
    page: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "monitor": dataclasses.asdict(self.monitor),
                "avoid_cpus": list(self.avoid_cpus),
                "page": self.page,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> MonitorSettings:
        """The settings an edge of this version wrote; a key this version does not know is an error (an edge
        and a monitor of different versions), not silently dropped."""
        data = json.loads(text)
        return cls(MonitorConfig(**data["monitor"]), tuple(data["avoid_cpus"]), data["page"])
