"""The interface every compression driver implements."""

from __future__ import annotations

import abc
import dataclasses
from typing import BinaryIO, ContextManager

from accel_daemon.engine.filters import CommandPolicy
from accel_daemon.engine.progress import Progress
from accel_daemon.engine.settings import Settings

GZIP = 'gzip'
ZSTD = 'zstd'


@dataclasses.dataclass(frozen=True)
class Availability:
    available: bool
    reason: str = ''
    version: str | None = None


@dataclasses.dataclass
class Stats:
    """What a driver reports about one run."""
    engine: str
    hardware: bool
    bytes_in: int = 0
    bytes_out: int = 0
    cpu_seconds: float = 0.0


class Compressor(abc.ABC):
    """One compression engine.

    ``compress`` writes a complete stream of ``output_format`` to an already
    created, empty file ``dst`` (a temp name the engine publishes atomically).
    ``open_decompressed`` returns a readable stream of the decompressed bytes
    of ``src``; the engine enforces size caps and writes sparse output.
    """

    name: str = ''
    hardware: bool = False
    output_format: str = GZIP

    def __init__(self, settings: Settings, policy: CommandPolicy) -> None:
        self.settings = settings
        self.policy = policy

    @abc.abstractmethod
    def availability(self) -> Availability:
        """Whether this engine can run here, and if not, why."""

    @abc.abstractmethod
    def compress(self, src: str, dst: str, progress: Progress) -> Stats:
        """Compress the file ``src`` into the existing file ``dst``."""

    @abc.abstractmethod
    def open_decompressed(self, src: str,
                          progress: Progress) -> ContextManager[BinaryIO]:
        """A context manager yielding a stream of the decompressed bytes."""
