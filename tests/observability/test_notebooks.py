"""Every notebook in examples/notebooks runs top to bottom in CI, so none can rot.

Each is executed with nbclient on a python3 kernel of this interpreter (ipykernel in the
project's environment), from its own folder as a reader would run it. The notebooks are
committed without outputs; the outputs here are checked for what they must show.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

import nbformat
import pytest
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "examples" / "notebooks")
                   .glob("*.ipynb"))


def _text(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") + "".join(o.get("data", {}).get("text/plain", ""))
                   for o in cell.get("outputs", []))


def _run(path: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    # the kernel must be this interpreter, with the project installed: say which it is
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    # IPC sockets in a private (0700) folder, not TCP ports any local user could reach
    private = Path(tempfile.mkdtemp(prefix="turnout-kernel-"))
    kernel = KernelManager(kernel_name="python3", transport="ipc", ip=str(private / "ipc"))
    try:
        NotebookClient(nb, km=kernel, timeout=120,
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        shutil.rmtree(private, ignore_errors=True)
    assert _text(nb.cells[-1]).strip() == sys.executable
    return nb


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebooks_are_committed_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, path.name
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.slow
def test_quickstart_serves_rolls_out_plots_and_stops() -> None:
    (path,) = [p for p in NOTEBOOKS if p.stem == "quickstart"]
    nb = _run(path)
    out = "\n".join(_text(c) for c in nb.cells if c.cell_type == "code")
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert errors == []
    # both protocols answered with what one of the two revisions predicts in-process
    predictions = dict(re.findall(r"^(http|grpc) prediction: (\[.*\])$", out, re.M))
    stable, canary = re.search(r"revision 1 predicts: (\[.*?\])  revision 2 predicts: (\[.*?\])",
                               out).groups()
    assert set(predictions) == {"http", "grpc"}
    assert set(predictions.values()) <= {stable, canary}
    # the rollout walked every step of the example manifest and promoted revision 2
    assert "phase progressing, stable iris-00001, canary iris-00002 at 10%" in out
    for step in (25, 50):
        assert f"canary iris-00002 advanced to {step}%" in out
    assert re.search(r"promoted iris-00002 to all traffic \(was iris-00001\)", out)
    assert "now serving: iris-00002 with 100 % of the traffic" in out
    # the plot: one PNG, with both revisions' traffic
    images = [o for c in nb.cells for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) == 1
    assert "revisions plotted: iris-00001, iris-00002" in out
    assert "plane exited with 0" in out


@pytest.mark.slow
def test_a_failing_cell_fails_the_run(tmp_path: Path) -> None:
    """The check above would notice: a notebook that raises stops with the cell's error."""
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("assert 1 + 1 == 3, 'bad'")],
                                  metadata={"kernelspec": {"name": "python3",
                                                           "display_name": "Python 3",
                                                           "language": "python"}})
    path = tmp_path / "broken.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(CellExecutionError, match="(?s)AssertionError.*bad"):
        _run(path)
