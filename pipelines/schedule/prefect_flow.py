"""A Prefect flow that refreshes tpgrid maps when their inputs change (needs the `schedule`
extra: ``pip install "tpgrid[schedule]"``).

    python pipelines/schedule/prefect_flow.py pipelines/tibet_1km.yaml   # serve, weekly

The flow asks tpgrid for a plan first (cheap: hashes, no computing), runs the pipeline only
when something changed, and returns the run record, so Prefect's UI shows what was
recomputed. Retries cover a cluster that is briefly unreachable; a bad input (TpgridError)
is not retried, since running again would not fix it.
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from typing import Any

from prefect import flow, task

from tpgrid.client import dask_client, load_cluster_spec
from tpgrid.config import load_pipeline
from tpgrid.errors import ClusterError, TpgridError
from tpgrid.runs import plan, plan_changes, run_pipeline


def _retry_unless_bad_input(task: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except ClusterError:
        return True
    except TpgridError:
        return False
    return True


@task
def changed_steps(config_path: str) -> list[str]:
    steps = plan(load_pipeline(config_path))
    return (
        [f"{s.name}: {s.detail}" for s in steps if s.action != "unchanged"]
        if plan_changes(steps)
        else []
    )


@task(retries=2, retry_delay_seconds=300, retry_condition_fn=_retry_unless_bad_input)
def run(config_path: str, cluster: str | None) -> dict[str, Any]:
    config = load_pipeline(config_path)
    spec = load_cluster_spec(cluster) if cluster else config.cluster
    with dask_client(spec):
        return asdict(run_pipeline(config))


@flow(name="tpgrid-refresh", log_prints=True)
def refresh(config_path: str, cluster: str | None = None) -> dict[str, Any] | None:
    changes = changed_steps(config_path)
    if not changes:
        print(f"{config_path}: no input changed; nothing to do")
        return None
    print("recomputing:\n  " + "\n  ".join(changes))
    return run(config_path, cluster)


if __name__ == "__main__":
    refresh.serve(
        name="tpgrid-weekly",
        cron="0 3 * * 1",
        parameters={
            "config_path": sys.argv[1],
            "cluster": sys.argv[2] if len(sys.argv) > 2 else None,
        },
    )
