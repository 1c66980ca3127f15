"""Start Plexus processes (or any process) for tests, learn their bound ports, stop them by PID.

Every long-running Plexus command takes ``--ready-file PATH``: once it listens it writes a JSON object there
(atomically: write to a temp file, then rename) naming each bound address, e.g.
``{"pid": 123, "listen": "127.0.0.1:40123", "admin": "127.0.0.1:40124"}``. ``ManagedProcess`` waits for that
file, so tests bind port 0 and never guess.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

from plexus.core.ready_file import write_ready_file

__all__ = ["ManagedProcess", "free_port", "wait_for", "write_ready_file"]

T = TypeVar("T")


def free_port() -> int:
    """A port that was free a moment ago. Prefer port 0 and a ready file; use this only when you must."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    predicate: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll until ``predicate()`` is truthy; return its value or raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the thing we wait for may not exist yet
            last_error = exc
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"timed out after {timeout}s waiting for {what or predicate!r}; last error: {last_error!r}"
            )
        time.sleep(interval)


EXITED: Final[dict[str, Any]] = {"exited": True}  # (ManagedProcess._read_ready: gone without a ready file)


class ManagedProcess:
    """A child process, optionally a ``plexus`` subcommand, stopped by its PID (never by name).

    ``ManagedProcess.plexus(["registry", "--listen", "127.0.0.1:0"])`` adds ``--ready-file``, waits for it.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        ready_file: Path | None = None,
        ready_timeout: float = 20.0,
        log_path: Path | None = None,
        cwd: str | None = None,
    ) -> None:
        self.argv = list(argv)
        self.ready_file = ready_file
        fd, name = tempfile.mkstemp(prefix="plexus-proc-", suffix=".log")
        os.close(fd)
        self.log_path = log_path or Path(name)
        full_env = dict(os.environ)
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        if env:
            full_env.update(env)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
        )
        self.info: dict[str, Any] = {}
        if ready_file is not None:
            try:
                ready = wait_for(
                    self._read_ready, timeout=ready_timeout, what=f"ready file of {self.argv[:3]}"
                )
            except TimeoutError:
                self.stop()
                raise TimeoutError(
                    f"{self.argv} did not become ready (still running); log:\n{self.log()}"
                ) from None
            if ready is EXITED:  # (it will never write its ready file: no use waiting out the timeout)
                code = self.proc.returncode
                self.stop()
                raise TimeoutError(f"{self.argv} exited with {code} before it was ready; log:\n{self.log()}")
            self.info = ready

    @classmethod
    def plexus(
        cls, args: Sequence[str], *, env: Mapping[str, str] | None = None, **kw: Any
    ) -> ManagedProcess:
        fd, name = tempfile.mkstemp(prefix="plexus-ready-", suffix=".json")
        os.close(fd)
        os.unlink(name)
        ready = Path(name)
        argv = [sys.executable, "-m", "plexus", *args, "--ready-file", str(ready)]
        return cls(argv, env=env, ready_file=ready, **kw)

    def _read_ready(self) -> dict[str, Any] | None:
        """The ready file's content; EXITED once the process exited without writing it. (The file first:
        a process that writes its ready file and exits at once, such as a client writing its results,
        is ready, not failed.)"""
        exited = self.proc.poll() is not None
        assert self.ready_file is not None
        if not self.ready_file.exists():
            return EXITED if exited else None
        data: dict[str, Any] = json.loads(self.ready_file.read_text())
        return data

    def address(self, name: str) -> str:
        """A bound address from the ready file, e.g. ``address("admin")`` → ``"127.0.0.1:40124"``."""
        return str(self.info[name])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-8000:]
        return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to clean up."""
        self.signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait, then SIGKILL; returns the exit code."""
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        if self.ready_file is not None:
            with contextlib.suppress(OSError):
                self.ready_file.unlink()
        return self.proc.returncode

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
