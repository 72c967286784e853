"""The README's notebook example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no python example"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out
    assert "'calibration':" in printed and "'loss':" in printed


def test_readme_test_command_is_what_ci_runs():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    command = (
        "python3 -m venv .venv && .venv/bin/pip install -q 'torch==2.13.0' "
        "-e '.[dvs,dev,torch,nir-snntorch]' && .venv/bin/python -m pytest"
    )
    assert command in text and command in ci
    assert (
        ".venv/bin/python -m pytest -m slow" in text and ".venv/bin/python -m pytest -m slow" in ci
    )
