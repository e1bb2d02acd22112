"""Wall time of each stage of an analysis (``StageTimes``), summed over runs: ``analyze`` reports it and
``bench/bench_report.py`` prints it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class StageTimes:
    """Seconds spent in each named stage, in the order the stages first ran."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Add the wall time of the ``with`` body to stage ``name``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def lines(self) -> str:
        """``stage  seconds`` lines and the total, for a console or a report."""
        width = max(map(len, self.seconds), default=5)
        rows = [f"{name:<{width}}  {value:7.2f} s" for name, value in self.seconds.items()]
        return "\n".join([*rows, f"{'total':<{width}}  {sum(self.seconds.values()):7.2f} s"])
