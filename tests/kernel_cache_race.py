"""Many rounds of processes starting at once on a fresh, shared numba cache directory.

Run from the repository root: ``python -m tests.kernel_cache_race [--rounds R] [--processes N]
[--readonly K] [--generic K] [--widen SECONDS]``. Each round starts N processes of
`tests.kernel_cache_child` together on an empty ``NUMBA_CACHE_DIR``; K of them predict a
read-only ``X`` without warming up first (``--readonly``: a second signature, until tpgrid
copied such an ``X``), or compile for ``NUMBA_CPU_NAME=generic`` (``--generic``: a second
target machine); ``--widen`` slows numba's cache writes by a random time up to SECONDS. Per
round it prints the processes that failed or got results other than scikit-learn's, how many
compiled each kernel, and what the cache holds: per kernel, its index entries and whether each
entry's data file holds the signature the entry is keyed on (a data file does not say which
CPU it is for).
"""

from __future__ import annotations

import argparse
import pickle
import tempfile
from pathlib import Path
from typing import Any

from tests.kernel_cache_child import KERNELS, start_together


def index_entries(cache_dir: Path) -> dict[str, list[tuple[str, str, bool]]]:
    """Per index file: (the key's X type and CPU, data file, whether the data file holds the
    signature the key names) for each entry."""
    entries: dict[str, list[tuple[str, str, bool]]] = {}
    for index in sorted(cache_dir.rglob("*.nbi")):
        with index.open("rb") as f:
            pickle.load(f)  # numba's version
            _stamp, overloads = pickle.loads(f.read())
        rows = []
        for key, data_name in overloads.items():
            signature, magic = key[0], key[1]
            payload: Any = pickle.loads((index.parent / data_name).read_bytes())
            x = "writable" if signature[0].mutable else "read-only"
            rows.append((f"X {x} on {magic[1]}", data_name, payload[3].args == signature))
        entries[index.name.split("-")[0]] = rows
    return entries


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--readonly", type=int, default=0)
    parser.add_argument("--generic", type=int, default=0)
    parser.add_argument("--widen", type=float, default=0.0)
    args = parser.parse_args()
    envs: list[dict[str, str]] = []
    for i in range(args.processes):
        env = {"KERNEL_CACHE_CHILD_WIDEN": str(args.widen)}
        if i < args.readonly:
            env["KERNEL_CACHE_CHILD_READONLY"] = "1"
        elif i < args.readonly + args.generic:
            env["NUMBA_CPU_NAME"] = "generic"
        envs.append(env)
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            outcomes = start_together(Path(tmp), envs)
            bad = [
                (code, result, err.strip().splitlines()[-1:])
                for code, result, err in outcomes
                if code != 0
                or result is None
                or not (result["mean_equal"] and result["variance_equal"])
                or not result["trees_equal"]
            ]
            compiled = {
                name: sum(result[name]["misses"] for _, result, _ in outcomes if result)
                for name in KERNELS
            }
            print(f"round {r}: failed or wrong {bad}, compiles {compiled}")
            for kernel, rows in index_entries(Path(tmp)).items():
                if kernel.split(".")[-1] in KERNELS:
                    print(f"    {kernel}: {rows}")


if __name__ == "__main__":
    main()
