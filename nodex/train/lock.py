"""One writer per run directory: a lock file that names its owner (pid, host, start time).

A second live run into the same directory is refused with one line; a lock left by a process that is gone (same
host, no such pid) is stale and taken over. The lock is created with ``O_EXCL`` (atomic on local filesystems).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from nodex.errors import NodexError

LOCK_NAME = ".nodex.lock"


class RunLockedError(NodexError):
    """Another live process writes into this run directory."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """``with RunLock(run_dir):`` holds the directory for this process.

    Raises:
        RunLockedError: on enter, when a live process (or one on another host) holds the lock.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        self.held = False

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            json.dump(self.owner, fh)
        return True

    def _writable_create(self) -> bool:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return self._create()
        except OSError as exc:  # read-only, no permission, or the run dir's path is a file
            raise RunLockedError(f"cannot write into the run dir {self.path.parent} ({exc}): choose a writable "
                                 "hydra.run.dir (hydra.sweep.dir for a sweep)") from None

    def _holder(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None  # vanished, or half-written by a process that died while writing it

    def acquire(self) -> "RunLock":
        """Take the lock (the first write into the run dir, so an unwritable dir is refused here, before any run).

        Raises:
            RunLockedError: a live process holds it, or the run dir cannot be written (read-only, no permission).
        """
        for _ in range(3):
            if self._writable_create():
                self.held = True
                return self
            holder = self._holder()
            if holder is not None and not self._stale(holder):
                started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("started", 0))))
                raise RunLockedError(
                    f"{self.path.parent} is in use by pid {holder.get('pid')} on {holder.get('host')} "
                    f"(since {started}):"
                    " wait for that run to end or choose another hydra.run.dir"
                )
            self.path.unlink(missing_ok=True)  # stale or unreadable: take it over
        raise RunLockedError(
            f"{self.path.parent}: could not take the run lock {self.path.name}; remove it if no run is using it"
        )

    def _stale(self, holder: dict[str, Any]) -> bool:
        if holder.get("host") != self.owner["host"]:
            return False  # cannot tell whether a process on another host is alive
        pid = int(holder.get("pid", -1))
        return pid == os.getpid() or pid <= 0 or not _alive(pid)

    def release(self) -> None:
        if self.held and self._holder() == self.owner:
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
