"""In-memory stand-ins for the Kafka side of the ingest core (unit tests only)."""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.events import DeadLetter, PartitionIdle, WindowClosed


@dataclass
class Rec:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int
    headers: tuple[tuple[str, bytes], ...] = ()


class Crash(Exception):
    """Simulated SIGKILL inside the core."""


@dataclass
class ListSink:
    letters: list[DeadLetter] = field(default_factory=list)
    windows: list[WindowClosed] = field(default_factory=list)
    buffered: list[DeadLetter] = field(default_factory=list)
    unflushed: list[WindowClosed] = field(default_factory=list)
    crash_on_publish: int | None = None  # crash before the Nth window publish
    idle: list[PartitionIdle] = field(default_factory=list)

    async def partition_idle(self, event: PartitionIdle) -> None:
        self.idle.append(event)

    async def dead_letter(self, letter: DeadLetter) -> None:
        self.buffered.append(letter)

    async def flush(self) -> None:
        self.letters.extend(self.buffered)
        self.buffered.clear()
        self.windows.extend(self.unflushed)
        self.unflushed.clear()

    async def window_closed(self, event: WindowClosed) -> None:
        if self.crash_on_publish is not None:
            if self.crash_on_publish == 0:
                self.crash_on_publish = None
                raise Crash("killed before publish")
            self.crash_on_publish -= 1
        self.unflushed.append(event)

    def lose_unflushed(self) -> None:
        """A crash loses what the producer had not yet acknowledged."""
        self.buffered.clear()
        self.unflushed.clear()
