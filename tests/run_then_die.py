"""Run a pipeline and SIGKILL this process part-way through a step: a killed run.

Usage: ``python run_then_die.py CONFIG SCHEDULER COUNT [LABEL]``; the process kills itself
(SIGKILL: no cleanup, no exception handlers) once more than COUNT progress reports whose label
starts with LABEL (default ``predict``: prediction chunks) have come in, e.g. ``0 "publish
quicklooks"`` while the first quicklook of a new version is being drawn.
"""

from __future__ import annotations

import os
import signal
import sys

from distributed import Client

from tpgrid.config import load_pipeline
from tpgrid.runs import run_pipeline


def main() -> None:
    config, scheduler, count = sys.argv[1:4]
    prefix = sys.argv[4] if len(sys.argv) > 4 else "predict"
    reported = 0

    def progress(label: str, done: int, total: int) -> None:
        nonlocal reported
        if label.startswith(prefix) and done:
            reported += 1
            if reported > int(count):
                os.kill(os.getpid(), signal.SIGKILL)

    with Client(scheduler):
        run_pipeline(load_pipeline(config), progress=progress)


if __name__ == "__main__":
    main()
