"""The notebook of examples/ runs from top to bottom in a fresh kernel and shows what it
says: the loss falls over its training steps and the attention is a distribution over the
teacher taps."""

import itertools
import json
from pathlib import Path

import pytest
from processes import REPO, environment

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

NOTEBOOK = REPO / "examples" / "sastc_loss.ipynb"


def stream_text(cell) -> str:
    return "".join(out.get("text", "") for out in cell.outputs if out.output_type == "stream")


@pytest.fixture(scope="module")
def executed():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute(env=environment())
    return notebook


def test_the_notebook_is_stored_without_outputs():
    stored = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in stored.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


def test_the_notebook_trains_and_shows_the_attention(executed: nbformat.NotebookNode):
    code = [cell for cell in executed.cells if cell.cell_type == "code"]
    errors = [out for cell in code for out in cell.outputs if out.output_type == "error"]
    assert not errors, errors

    printed = stream_text(code[1])  # the taps
    assert "teacher taps [(16, 14, 14, 8), (16, 7, 7, 16), (16, 3, 3, 32)]" in printed
    assert "student taps [(2, 16, 14, 14, 8), (2, 16, 7, 7, 16), (2, 16, 3, 3, 32)]" in printed

    summary = json.loads(stream_text(code[-1]).strip().splitlines()[-1])
    losses = summary["losses"]
    assert len(losses) == 8 and losses[-1] < 0.75 * losses[0]
    assert all(later < earlier for earlier, later in itertools.pairwise(losses))
    assert summary["attention_shape"] == [2, 16, 3, 3]  # (T, B, S, K)
    assert summary["row_sum_error"] < 1e-5  # each row a softmax over the teacher taps

    images = [out for out in code[-1].outputs if "image/png" in out.get("data", {})]
    assert len(images) == 1  # the heat map is displayed
    assert Path(NOTEBOOK).stat().st_size < 50_000  # stored without outputs: text only
