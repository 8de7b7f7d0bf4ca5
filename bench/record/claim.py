"""One owner per job directory: two sweeps pointed at one `hydra.sweep.dir` never measure into the
same folder at once.

A job claims its directory by creating `.claim` with O_CREAT | O_EXCL (atomic on a local file
system and on NFSv3+), holding the owner's host, pid and the process's start time, and removes it
when it ends. A claim whose process is gone (same host: no such pid, or the pid now belongs to a
process started later) is stale, left by a crash or a SIGKILL, and is taken over. A claim made on
another host cannot be checked from here: it stands until its owner removes it, and the message
names the file to delete if that host is gone.
"""
from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

CLAIM = ".claim"


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    started: float  # the owner process's start time (psutil create_time), to tell a reused pid

    def describe(self) -> str:
        when = time.strftime("%H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} on {self.host}, started {when}"


def _me() -> Owner:
    return Owner(socket.gethostname(), os.getpid(), psutil.Process().create_time())


def owner(job_dir: Path) -> Owner | None:
    """Who holds job_dir now (None: nobody, or a stale claim)."""
    try:
        node = json.loads((Path(job_dir) / CLAIM).read_text())
        o = Owner(str(node["host"]), int(node["pid"]), float(node["started"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        # Being written this instant, or damaged: a claim younger than a minute stands.
        try:
            young = time.time() - (Path(job_dir) / CLAIM).stat().st_mtime < 60
        except OSError:
            return None
        return Owner("?", -1, 0.0) if young else None
    return o if _alive(o) else None


def _alive(o: Owner) -> bool:
    if o.host != socket.gethostname():
        return True  # cannot be checked from here
    try:
        return abs(psutil.Process(o.pid).create_time() - o.started) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def claim(job_dir: Path) -> Owner | None:
    """Take job_dir for this process. Returns None when taken (or already ours), else the live
    owner that holds it."""
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    me = _me()
    for _ in range(3):  # a stale claim is removed and the create tried again
        try:
            fd = os.open(job_dir / CLAIM, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = owner(job_dir)
            if held == me:
                return None
            if held is not None:
                return held
            (job_dir / CLAIM).unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            json.dump({"host": me.host, "pid": me.pid, "started": me.started}, f)
        return None
    return owner(job_dir) or Owner("?", -1, 0.0)


def release(job_dir: Path) -> None:
    """Remove this process's claim on job_dir (another's is left alone)."""
    path = Path(job_dir) / CLAIM
    try:
        node = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if node.get("pid") == os.getpid() and node.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)
