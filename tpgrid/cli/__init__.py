"""The ``tpgrid`` command. Thin: parse options, open a Dask client, call the library, report.

The commands are grouped by what they do: :mod:`~tpgrid.cli.init` (init),
:mod:`~tpgrid.cli.pipeline` (demo, run, verify, runs), :mod:`~tpgrid.cli.steps` (synth, cube,
fit, predict, report) and :mod:`~tpgrid.cli.bench`; what they share (the app, its options,
locks, error handling) is :mod:`~tpgrid.cli.common`. They are registered here, in the order
`tpgrid --help` lists them.
"""

from tpgrid.cli import bench, init, pipeline, steps
from tpgrid.cli.common import EXIT_DAMAGED, EXIT_INTERRUPTED, EXIT_UNCHANGED, app

app.command()(init.init)
app.command()(steps.synth)
app.command()(steps.cube)
app.command()(pipeline.demo)
app.command()(pipeline.run)
app.command()(pipeline.verify)
app.command()(pipeline.runs)
app.command()(steps.fit)
app.command()(steps.predict)
app.command()(steps.report)
app.command()(bench.bench)

__all__ = ["EXIT_DAMAGED", "EXIT_INTERRUPTED", "EXIT_UNCHANGED", "app"]
