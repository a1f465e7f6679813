"""``python -m tpgrid`` is the ``tpgrid`` command."""

from tpgrid.cli import app

app(prog_name="tpgrid")
