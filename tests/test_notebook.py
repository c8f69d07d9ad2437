"""notebooks/quickstart.ipynb runs top to bottom on the CPU with small settings, offline (the bundled
sample books through the local mirror), and is committed without outputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_notebook_is_committed_without_outputs():
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, cell["source"][:80]
    assert "parameters" in nb["cells"][2]["metadata"].get("tags", [])


@pytest.mark.slow
def test_notebook_runs_top_to_bottom_on_cpu(tmp_path, monkeypatch):
    if os.environ.get("CI"):  # the dev extra installs them: in CI a missing one is a failure, not a skip
        import nbclient
        import nbformat
    else:
        nbformat = pytest.importorskip("nbformat")
        nbclient = pytest.importorskip("nbclient")
    small = {
        "PTGPT_NB_SOURCE": "sample",  # never the network in tests
        "PTGPT_NB_BOOKS": "0",
        "PTGPT_NB_VOCAB": "600",
        "PTGPT_NB_PRESET": "tiny",
        "PTGPT_NB_STEPS": "20",
        "PTGPT_NB_SFT_STEPS": "2",
        "PTGPT_NB_SCORE_ITEMS": "4",
        "PTGPT_NB_WORK": str(tmp_path / "work"),
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",  # torch in the kernel and in the ptgpt subprocesses: no oversubscription
    }
    for key, value in small.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()

    outputs = {i: cell.get("outputs", []) for i, cell in enumerate(nb.cells) if cell.cell_type == "code"}
    # one print may arrive as several stream messages: join them as they came
    text = "".join(
        o.get("text", "") for outs in outputs.values() for o in outs if o["output_type"] == "stream"
    )
    assert "source: sample" in text
    assert "downloaded" in text and "failed 0" in text  # the scrape through the local mirror
    assert "preset tiny, 20 steps" in text
    assert "bpb validation" in text and "choice acc" in text  # ptgpt eval
    assert "Era uma vez" in text and "Disse-lhe a mãe que" in text  # ptgpt generate
    assert "held-out instructions (4 items" in text and "\n> " in text and "expected: " in text  # sft, chat
    images = [o for outs in outputs.values() for o in outs if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the cleaning plot and the live loss plot
    html = [
        o["data"]["text/html"] for outs in outputs.values() for o in outs if "text/html" in o.get("data", {})
    ]
    assert any("kept" in h and "encoding" in h for h in html)  # the per-book cleaning table
    run = tmp_path / "work" / "run"
    assert (run / "metrics.jsonl").is_file() and any((run / "checkpoints").iterdir())
    assert (tmp_path / "work" / "sft" / "heldout_scores.json").is_file()
