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

The spool holds tenants' events: it is private to its owner. Directories are
created 0700 and segments 0600; a directory or segment found with wider
permissions is tightened (or, if that is not allowed, a warning says so);
PRODUCER_SPOOL_DIR itself, which may be any directory, is only warned about.
Its size is capped (``max_bytes``, PRODUCER_SPOOL_MAX_BYTES, per directory:
every process's segments count): a write that would pass the cap raises
``SpoolFull`` and writes nothing, so the caller keeps the batch in memory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

logger = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".jsonl"
DIRECTORY_MODE = 0o700
FILE_MODE = 0o600
_GROUP_OR_OTHER = stat.S_IRWXG | stat.S_IRWXO


class SpoolFull(OSError):
    """The spool reached its cap (PRODUCER_SPOOL_MAX_BYTES); nothing was written."""


def make_private(path: Path, mode: int) -> None:
    """Tighten ``path`` to ``mode`` if group or others have any access; warn if that fails."""
    try:
        current = path.stat().st_mode
    except FileNotFoundError:
        return
    if current & _GROUP_OR_OTHER:
        try:
            path.chmod(mode)
            logger.warning("analytics producer: spool %s was accessible to others (%o); now %o",
                           path, stat.S_IMODE(current), mode)  # fmt: skip
        except OSError as exc:
            logger.warning("analytics producer: spool %s is accessible to others (%o) and cannot be made "
                           "private: %s", path, stat.S_IMODE(current), exc)  # fmt: skip


class Segment:
    """One spool file, locked by this process for as long as it is open."""

    def __init__(self, path: Path, handle: BinaryIO) -> None:
        self.path = path
        self._handle = handle
        self.events = 0

    @classmethod
    def create(cls, directory: Path) -> Segment:
        path = directory / f"{time.time_ns():020d}-{os.getpid()}{SEGMENT_SUFFIX}"
        # Owner-only from the start; appends go to the end whatever the read position.
        handle = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, FILE_MODE), "a+b")
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
        make_private(path, FILE_MODE)
        return cls(path, handle)

    @staticmethod
    def encode(message: dict[str, Any]) -> bytes:
        return json.dumps(message, separators=(",", ":")).encode() + b"\n"

    def append(self, message: dict[str, Any], events: int, line: bytes | None = None) -> None:
        self._handle.write(line if line is not None else self.encode(message))
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
    """Segments of one directory; ``max_bytes`` caps the directory's total (0: no cap).

    The directory (one per queue below PRODUCER_SPOOL_DIR) is made owner-only
    when first written to or read; PRODUCER_SPOOL_DIR itself is created 0700,
    and only warned about if it exists with wider permissions (it may be any
    directory).
    """

    def __init__(self, directory: Path, max_bytes: int = 0) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._current: Segment | None = None
        self._ready: list[Segment] = []  # closed for writing, waiting to be replayed
        self._private = False
        self._warned_parent = False

    def _ensure_directory(self) -> None:
        if self._private and self.directory.is_dir():
            return
        parent = self.directory.parent
        if not parent.exists():
            parent.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
        elif stat.S_IMODE(parent.stat().st_mode) & _GROUP_OR_OTHER and not self._warned_parent:
            # Not ours to change (it may be any directory): say so once.
            self._warned_parent = True
            logger.warning("analytics producer: spool directory %s is accessible to others (%o); its queue "
                           "directories are kept private", parent, stat.S_IMODE(parent.stat().st_mode))  # fmt: skip
        try:
            self.directory.mkdir(mode=DIRECTORY_MODE)
        except FileExistsError:
            make_private(self.directory, DIRECTORY_MODE)
        self._private = True

    def size(self) -> int:
        """Bytes of every segment in the directory (this process's and others')."""
        total = 0
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return 0
        for entry in entries:
            if entry.name.endswith(SEGMENT_SUFFIX):
                with contextlib.suppress(FileNotFoundError):  # replayed and deleted meanwhile
                    total += entry.stat().st_size
        return total

    def write(self, message: dict[str, Any], events: int) -> None:
        """Append one batch; raises SpoolFull (writing nothing) if it would pass the cap."""
        self._ensure_directory()
        line = Segment.encode(message)
        if self.max_bytes and self.size() + len(line) > self.max_bytes:
            raise SpoolFull(f"spool {self.directory} would pass PRODUCER_SPOOL_MAX_BYTES={self.max_bytes}")
        if self._current is None:
            self._current = Segment.create(self.directory)
        self._current.append(message, events, line)

    def pending_events(self) -> int:
        current = self._current.events if self._current else 0
        return current + sum(segment.events for segment in self._ready)

    def claim_orphans(self) -> int:
        """Take over the segments of processes that died; returns how many."""
        if not self.directory.is_dir():
            return 0
        self._ensure_directory()
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
