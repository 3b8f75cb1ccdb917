"""notebooks/quickstart.ipynb runs top to bottom offline on a trained
workdir (``served_workdir``: the reduced ``:small`` pipeline)."""

import re

import pytest

from tests.conftest import REPO_ROOT

NOTEBOOK = REPO_ROOT / "notebooks" / "quickstart.ipynb"


@pytest.mark.slow
def test_quickstart_notebook_runs_and_shows_pictures_and_a_ranked_list(
  served_workdir,
):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
  assert len(params) == 1, "the notebook needs one cell tagged 'parameters'"
  params[
    0
  ].source += (
    f"\nWORKDIR = {str(served_workdir)!r}\nTRAIN_IF_MISSING = False\nK = 3\n"
  )
  client = nbclient.NotebookClient(
    nb,
    timeout=600,
    kernel_name="python3",
    resources={"metadata": {"path": str(NOTEBOOK.parent)}},
  )
  client.execute()  # raises CellExecutionError on the first failing cell
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert images, "no picture shown"
  text = "".join(
    o.get("text", "") for o in outputs if o.output_type == "stream"
  )
  ranked = re.findall(r"^\s+1\. .+\[id [^\]]+\]", text, re.MULTILINE)
  assert ranked, "no ranked list printed"
