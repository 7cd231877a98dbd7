"""A local append-only spool for batches the broker cannot take right now.

While the broker is unreachable the publishing thread writes each batch (event
ids already assigned) as one JSON line to a segment file and fsyncs it, once
per flush interval. When the broker is back, segments are replayed oldest
first, then deleted. A replay cut short is replayed again from the start: the
worker drops the events it already stored, so order and exactly-once survive.

Segments are named ``<time_ns>-<pid>.jsonl`` and held under an exclusive
``flock`` by the process writing or replaying them. A segment nobody holds
belongs to a process that died: the next tracker to start (in any process
using the same directory) claims and replays it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

logger = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".jsonl"


class Segment:
    """One spool file, locked by this process for as long as it is open."""

    def __init__(self, path: Path, handle: BinaryIO) -> None:
        self.path = path
        self._handle = handle
        self.events = 0

    @classmethod
    def create(cls, directory: Path) -> Segment:
        path = directory / f"{time.time_ns():020d}-{os.getpid()}{SEGMENT_SUFFIX}"
        handle = path.open("a+b")  # appends go to the end whatever the read position
        fcntl.flock(handle, fcntl.LOCK_EX)
        return cls(path, handle)

    @classmethod
    def claim(cls, path: Path) -> Segment | None:
        """Lock an orphaned segment, or None if a live process holds it."""
        try:
            handle = path.open("r+b")
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        if not path.exists():  # replayed and deleted between our listing and our lock
            handle.close()
            return None
        return cls(path, handle)

    def append(self, message: dict[str, Any], events: int) -> None:
        self._handle.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.events += events

    def messages(self) -> Iterator[dict[str, Any]]:
        self._handle.seek(0)
        for number, line in enumerate(self._handle, start=1):
            try:
                yield json.loads(line)
            except ValueError:
                # Only the last line can be torn, by a crash mid-write: that batch
                # was never acknowledged to anyone and is inside the loss window.
                logger.error("spool %s: line %d is truncated, skipped", self.path.name, number)

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)
        self._handle.close()

    def abandon(self) -> None:
        """Close without deleting (a forked child drops the parent's segments)."""
        self._handle.close()


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._current: Segment | None = None
        self._ready: list[Segment] = []  # closed for writing, waiting to be replayed

    def write(self, message: dict[str, Any], events: int) -> None:
        if self._current is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._current = Segment.create(self.directory)
        self._current.append(message, events)

    def pending_events(self) -> int:
        current = self._current.events if self._current else 0
        return current + sum(segment.events for segment in self._ready)

    def claim_orphans(self) -> int:
        """Take over the segments of processes that died; returns how many."""
        if not self.directory.is_dir():
            return 0
        claimed = 0
        for path in sorted(self.directory.glob(f"*{SEGMENT_SUFFIX}")):
            segment = Segment.claim(path)
            if segment is not None:
                segment.events = sum(len(message.get("rows", ())) for message in segment.messages())
                self._ready.append(segment)
                claimed += 1
        self._ready.sort(key=lambda segment: segment.path.name)
        return claimed

    def has_pending(self) -> bool:
        return self._current is not None or bool(self._ready)

    def segments_to_replay(self) -> list[Segment]:
        """Oldest first; the segment being written is closed for writing first."""
        if self._current is not None:
            self._ready.append(self._current)
            self._current = None
        return list(self._ready)

    def replayed(self, segment: Segment) -> None:
        self._ready.remove(segment)
        segment.delete()

    def abandon(self) -> None:
        for segment in [*self._ready, *([self._current] if self._current else [])]:
            segment.abandon()
        self._ready, self._current = [], None
