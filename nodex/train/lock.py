"""One writer per run directory: ``.nodex.lock``, held with ``fcntl.flock`` for the run's lifetime.

Why ``flock`` on a file kept open (not an ``O_EXCL`` file judged stale by its contents): the kernel releases the lock
when its holder dies in any way (``kill -9`` included), so there is no stale lock to take over and no race in taking
one over; acquiring is one atomic call. Linux's NFS client maps ``flock`` onto NFS byte-range locks (coherent across
hosts; a crashed host's locks are freed by the server when its lease ends), and Lustre/GPFS honour it when mounted with
their ``flock`` option. The file also holds the owner's record (pid, host, start time, Slurm job), for the message
and for one case ``flock`` cannot decide: a requeued Slurm job whose previous attempt ran on a host that died (its
lock not yet freed by the server) takes over its own lock (same ``SLURM_JOB_ID``). A lock held by a live process,
on this host or another, is refused with one line naming host and pid.

Where ``flock`` is not supported (``ENOLCK``/``EOPNOTSUPP``: an NFS mount with ``nolock``), the owner record alone
decides, as before: a record of a process gone from this host (or of this Slurm job's earlier attempt) is taken over;
that fallback is not atomic.

Releasing removes the file while still holding the lock, after checking that the path still names the file we
locked (a process that opened the old file meanwhile finds it unlinked and retries on the new one).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from nodex.errors import NodexError

LOCK_NAME = ".nodex.lock"
NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


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


def owner_record() -> dict[str, Any]:
    """This process as a lock owner: pid, host, start time and, under Slurm, the job id and its restart count."""
    record: dict[str, Any] = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    if os.environ.get("SLURM_JOB_ID"):
        record["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
    return record


class RunLock:
    """``with RunLock(run_dir):`` holds the directory for this process.

    ``created_dir``: whether acquiring created ``run_dir`` (a refused run can then remove it again). ``name``: the
    lock file's (a sweep holds ``SWEEP_DIR/.nodex/sweep.lock`` the same way).

    Raises:
        RunLockedError: on enter, when a live process (here or on another host) holds the lock.
    """

    def __init__(self, run_dir: str | Path, name: str = LOCK_NAME) -> None:
        self.path = Path(run_dir) / name
        self.owner = owner_record()
        self.held = False
        self.created_dir = False
        self._fd: int | None = None
        self._flock: bool | None = True  # whether this filesystem supports flock (None: it does not)

    def _open(self) -> int:
        try:
            if not self.path.parent.is_dir():
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.created_dir = True
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # read-only, no permission, or the run dir's path is a file
            raise RunLockedError(f"cannot write into the run dir {self.path.parent} ({exc}): choose a writable "
                                 "hydra.run.dir (hydra.sweep.dir for a sweep)") from None

    def _same_file(self, fd: int) -> bool:
        try:
            return os.path.samestat(os.fstat(fd), os.stat(self.path))
        except OSError:
            return False

    def _try_flock(self, fd: int) -> bool | None:
        """``True``: locked; ``False``: held by another; ``None``: this filesystem has no ``flock``."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno in NO_FLOCK:
                return None
            raise

    def _holder(self) -> dict[str, Any] | None:
        for _ in range(20):  # the winner of a race writes its record just after locking
            try:
                record = json.loads(self.path.read_text())
                if isinstance(record, dict):
                    return record
            except (OSError, ValueError):
                pass
            time.sleep(0.005)
        return None

    def _own_earlier_attempt(self, holder: dict[str, Any] | None) -> bool:
        """The holder is this Slurm job's previous attempt (a requeue), or (no ``flock``) a process gone from here."""
        if holder is None:
            return False
        local = holder.get("host") == self.owner["host"]
        try:
            pid = int(holder.get("pid", -1))
        except (TypeError, ValueError):
            pid = -1
        if local and pid > 0 and pid != os.getpid() and _alive(pid):
            return False  # visibly alive
        same_job = self.owner.get("slurm_job_id") is not None and holder.get("slurm_job_id") == self.owner.get(
            "slurm_job_id")
        return same_job or (local and self._flock is None)

    def acquire(self) -> "RunLock":
        """Take the lock (the first write into the run dir, so an unwritable dir is refused here, before any run).

        Raises:
            RunLockedError: a live process holds it, or the run dir cannot be written (read-only, no permission).
        """
        for _ in range(5):
            fd = self._open()
            self._flock = self._try_flock(fd)
            if self._flock is not False and (self._flock is None or self._same_file(fd)):
                if self._flock is None and not self._take_without_flock():
                    os.close(fd)
                    self._refuse(self._holder())
                self._write_record(fd)
                return self
            os.close(fd)
            if self._flock is False:
                holder = self._holder()
                if not self._own_earlier_attempt(holder):
                    self._refuse(holder)
                self.path.unlink(missing_ok=True)  # our requeued job's own lock: a fresh file, locked below
        raise RunLockedError(f"{self.path.parent}: could not take the run lock {self.path.name}; "
                             "remove it if no run is using it")

    def _take_without_flock(self) -> bool:
        holder = self._holder()
        return holder is None or holder.get("pid") == self.owner["pid"] or self._own_earlier_attempt(holder)

    def _write_record(self, fd: int) -> None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self.owner).encode(), 0)
        self._fd, self.held = fd, True

    def _refuse(self, holder: dict[str, Any] | None) -> None:
        if holder is None:
            raise RunLockedError(f"{self.path.parent} is in use by another process (lock {self.path}): wait for that "
                                 "run to end or choose another hydra.run.dir")
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("started", 0) or 0)))
        raise RunLockedError(f"{self.path.parent} is in use by pid {holder.get('pid')} on {holder.get('host')} "
                             f"(since {started}): wait for that run to end or choose another hydra.run.dir")

    def release(self) -> None:
        """Remove the lock file (if it is still ours) and let go of the lock."""
        if self._fd is not None:
            if self._same_file(self._fd):
                self.path.unlink(missing_ok=True)
            os.close(self._fd)  # closing releases the flock
            self._fd = None
        self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
