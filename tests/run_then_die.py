"""Run a pipeline and SIGKILL this process part-way through prediction: a killed run.

Usage: ``python run_then_die.py CONFIG SCHEDULER CHUNKS``; the process kills itself (SIGKILL:
no cleanup, no exception handlers) once CHUNKS prediction chunks are done.
"""

from __future__ import annotations

import os
import signal
import sys

from distributed import Client

from tpgrid.config import load_pipeline
from tpgrid.runs import run_pipeline


def main() -> None:
    config, scheduler, chunks = sys.argv[1:4]
    predicted = 0

    def progress(label: str, done: int, total: int) -> None:
        nonlocal predicted
        if label.startswith("predict") and done:
            predicted += 1
            if predicted > int(chunks):
                os.kill(os.getpid(), signal.SIGKILL)

    with Client(scheduler):
        run_pipeline(load_pipeline(config), progress=progress)


if __name__ == "__main__":
    main()
