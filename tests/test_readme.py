"""The README's set-up commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", text)


def test_readme_opens_with_the_demo_and_the_test_command() -> None:
    install_and_demo, install_and_test = readme_commands()[:2]
    assert install_and_demo.endswith("pip install . && tpgrid demo")
    assert install_and_test.endswith('pip install ".[test]" && pytest')


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in ci
