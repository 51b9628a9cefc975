"""Child: one process that `bailing up` (bailing.stack.Stack) or a test starts and supervises, as the leader
of its own process group with its output in a log file, so that a signal to the group reaches every
process it started (compile helpers, follower ranks) and a terminal's Ctrl-C reaches only the launcher.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Child:
    """One child process (a process-group leader) and the log file its output goes to."""

    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def start(self, env: dict[str, str], append: bool = False) -> None:
        """Start the process; `append` keeps the log of a previous run (a restart) above the new one."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab" if append else "wb") as log:
            if append:
                log.write(f"\n===== restarted at {time.strftime('%Y-%m-%d %H:%M:%S')} =====\n".encode())
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,  # own process group: a terminal's Ctrl-C reaches only the launcher
            )  # fmt: skip

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def exit_code(self) -> int | None:
        """None while running (or never started), else the exit code (negative: killed by a signal)."""
        return self.proc.poll() if self.proc is not None else None

    def group_alive(self) -> bool:
        """True while any process of the child's group (the child or a stray grandchild) exists."""
        if self.proc is None:
            return False
        self.proc.poll()  # reap the leader if it exited, so only live processes count
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def signal_group(self, sig: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_bytes()[-16384:].decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def describe(self) -> str:
        code = self.exit_code()
        state = "running" if code is None else f"exited with code {code}"
        return f"{self.name} (pid {self.pid}) {state}; last lines of {self.log_path}:\n{self.tail()}"
