"""Run `leukotune tune` as a background process and wait on what it prints (shared by the slow tests).

Waiting on the driver's own output rather than polling its SQLite database keeps the test from racing the
driver while MLflow creates its tables.
"""
from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path


class StudyProcess:
    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]):
        self.process = subprocess.Popen([sys.executable, "-m", "leukotune.tuner.cli", *args], cwd=cwd, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_for(self, pattern: str, limit_s: float = 600, after: int = 0) -> bool:
        """True once a line printed after the first `after` matches `pattern`; False if the process ends or time
        runs out first. The limit is a hang guard, generous for a loaded 2-core machine: it returns as soon as the
        line is there."""
        regex = re.compile(pattern)
        deadline = time.time() + limit_s
        seen = after
        while time.time() < deadline:
            while seen < len(self.lines):
                if regex.search(self.lines[seen]):
                    return True
                seen += 1
            if self.process.poll() is not None and seen >= len(self.lines):
                return False
            time.sleep(0.2)
        return False

    def finish(self, timeout: float = 600) -> str:
        self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return "".join(self.lines)
