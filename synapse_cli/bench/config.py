"""What a bench measures and how (SPEC §4 ``synapse bench``), and the snapshots its progress shows.

:class:`BenchConfig` is the one description of a run: the CLI's options become one, the driver runs it,
``--procs`` shards it, and the report shows it (:meth:`BenchConfig.describe`, without the token).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from synapse_cli.bench.schedule import LoadShape

__all__ = ["BenchConfig", "Call", "Progress"]


@dataclass(frozen=True)
class Call:
    """One call of a ``--data`` mix: a function, its arguments and how often it is drawn."""

    func: str
    args: Any
    weight: float = 1.0


@dataclass(frozen=True)
class BenchConfig:
    """What to measure and how (SPEC §4 ``synapse bench``)."""

    url: str
    func: str = "add_numbers"
    args: Any = field(default_factory=lambda: [1, 2])
    calls: int | None = 1000
    duration: float | None = None
    concurrency: int = 50
    connections: int | None = None
    warmup: float = 1.0
    rate: float | None = None
    shape: LoadShape | None = None  # stages of the open model (``rate`` is then None)
    timeout: float = 10.0
    token: str | None = None
    dialect: str = "native"
    cafile: str | None = None
    insecure: bool = False
    procs: int = 1
    mix: tuple[Call, ...] = ()  # --data: several calls instead of func(args)
    data: str | None = None  # where the mix came from (shown in the report)
    shard: tuple[int, int] | None = None  # (index from 0, count)
    start_at: float | None = None  # Unix time at which measuring starts

    @property
    def connection_count(self) -> int:
        return max(1, min(self.connections or min(self.concurrency, 8), self.concurrency))

    @property
    def load_shape(self) -> LoadShape | None:
        """The open model's rate over time; None in the closed model."""
        return self.shape or (LoadShape.constant(self.rate) if self.rate else None)

    @property
    def calls_mixed(self) -> tuple[Call, ...]:
        return self.mix or (Call(self.func, self.args),)

    def describe(self) -> dict[str, Any]:
        """The config as the report shows it (no token)."""
        shown = asdict(self)
        for key in ("token", "mix", "shape", "shard", "start_at"):
            shown.pop(key)
        shown["connections"] = self.connection_count
        shown["model"] = "open" if self.load_shape else "closed"
        if self.shape is not None:
            shown["stages"] = str(self.shape)
        if self.mix:
            shown["func"] = None
            shown["args"] = None
            shown["functions"] = sorted({call.func for call in self.mix})
        if self.shard is not None:
            shown["shard"] = f"{self.shard[0]}/{self.shard[1]}"
        if self.start_at is not None:
            shown["start_at"] = self.start_at
        return shown


@dataclass(slots=True)
class Progress:
    """A snapshot for the live progress bar and sparklines."""

    done: int
    total: int | None
    elapsed: float
    planned: float | None
    calls_per_s: float
    in_flight: int
    errors: int
    warming_up: bool
    recent: list[tuple[float, float | None]] = field(default_factory=list)  # (calls/s, p99 ms) per second
    source: int = 0  # which process (--procs)
