"""The analysis notebook runs top to bottom against the committed reference results, and against a
fresh sweep named by LORA_BENCH_RESULTS, as a user runs it on theirs."""
import os

import nbformat
from nbclient import NotebookClient

from tests.conftest import FAST, ROOT, run_cli


def _execute(results=None) -> str:
    path = ROOT / "notebooks" / "analysis.ipynb"
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
    env = dict(os.environ)
    env.pop("LORA_BENCH_RESULTS", None)
    if results is not None:
        env["LORA_BENCH_RESULTS"] = str(results)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})
    old = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        client.execute()  # raises CellExecutionError on the first failing cell
    finally:
        os.environ.clear()
        os.environ.update(old)
    return "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))


def test_notebook_executes_on_the_reference_and_is_committed_clean():
    text = _execute()
    assert "job directories" in text and "study minimind_88_cpu" in text and "Verdict:" in text


def test_notebook_reads_a_fresh_sweep_from_the_environment_and_groups_it_by_configuration(tmp_path):
    sweep = tmp_path / "my_sweep"
    r = run_cli(["-m", "strategy=full,lora_qk,lora_last", *FAST, "repeat=0,1", "train.profile=false",
                 f"hydra.sweep.dir={sweep}"], cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    text = _execute(sweep)
    assert f"{sweep}: 6 job directories" in text
    assert "study my_sweep: 6 measured records" in text  # the sweep, not its job folders 0..5
    configs = next(ln for ln in text.splitlines() if ln.startswith("Configurations:"))
    # One row per configuration (a configuration measured only on a busy machine is marked so)
    names = {c.replace(" (disturbed)", "") for c in configs.split(": ", 1)[1].split(", ")}
    assert names == {"full", "lora_qk r=8", "lora_last r=8"}
    # One verdict for the one setting, over its configurations (not one per job folder). Which
    # configuration it names depends on which jobs a busy runner disturbed, so it is not asserted.
    assert sum(ln.startswith("Verdict:") for ln in text.splitlines()) == 1
