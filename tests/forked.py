"""Run ``stallholder`` commands in processes forked from one that imported Stallholder once.

The kill tests start a server or a worker twenty-odd times each; a fresh interpreter spends
2.4 s importing Stallholder before it serves (several times that with the suite's other
workers on two cores). Here a multiprocessing fork server imports ``stallholder.cli``,
the app and the worker once, and every start is a fork of it that sets its own
environment and runs the command-line entry point (``stallholder serve`` or ``stallholder
worker``), with its output in a log file. The child is a real process of its own: SIGKILL
ends it at any instruction, as it would end a process started from scratch. What start-up
itself does is covered by the tests that run the ``stallholder`` executable
(``tests/integration/test_cli.py``).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(
    ["stallholder.cli", "stallholder.app", "stallholder.jobs.worker", "uvicorn"]
)


def _run(argv: Sequence[str], env: Mapping[str, str], log: str) -> None:
    """The child: its output to ``log``, the given environment, then the command."""
    descriptor = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(descriptor, 1)
    os.dup2(descriptor, 2)
    os.close(descriptor)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = ["stallholder", *argv]
    from stallholder.cli import main

    main()


class ForkedCommand:
    """One ``stallholder`` command, started (again and again) as a fork."""

    def __init__(self, argv: Sequence[str], *, env: Mapping[str, str], log: Path) -> None:
        self.argv = list(argv)
        self.env = dict(env)
        self.log = log
        self.process: multiprocessing.process.BaseProcess | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.log.touch()
        self.process = _CONTEXT.Process(
            target=_run, args=(self.argv, self.env, str(self.log)), daemon=True
        )
        self.process.start()

    def running(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def kill(self) -> None:
        """SIGKILL, and wait until it is gone."""
        assert self.process is not None
        self.process.kill()
        self.process.join()

    def stop(self, signal_number: int, *, timeout: float) -> None:
        """Ask it to stop with ``signal_number``; SIGKILL if it has not after ``timeout``."""
        if not self.running():
            return
        assert self.process is not None
        assert self.process.pid is not None
        os.kill(self.process.pid, signal_number)
        self.process.join(timeout)
        if self.process.is_alive():
            self.kill()
