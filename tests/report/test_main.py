"""`python -m bench.report`: rebuild, combine, print tables, and fail in one line."""
import subprocess
import sys

from tests.conftest import ROOT
from tests.fixtures import SLOW_BY_OPS, record, write


def test_report_cli_combines_directories(sweep, tmp_path):
    other = tmp_path / "other"
    write(other, "0", record(strategy="lora_last", rank=2, step=8.0, spread=(7.5, 8.5)))
    res = subprocess.run([sys.executable, "-m", "bench.report", str(sweep), str(other), "--out",
                          str(tmp_path / "both")], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "lora_last r=2" in (tmp_path / "both" / "report.md").read_text()
    res = subprocess.run([sys.executable, "-m", "bench.report", str(tmp_path / "nope")], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.count("\n") == 1


def test_table_prints_and_no_html_skips_the_heavy_file(tmp_path):
    root = tmp_path / "s"
    write(root, "0", record())
    write(root, "1", record(**SLOW_BY_OPS))
    res = subprocess.run([sys.executable, "-m", "bench.report", str(root), "--table"], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    row = next(ln for ln in res.stdout.splitlines() if ln.startswith("| lora_all r=8"))
    assert "| 1.50x |" in row and "30.00 (29.00-31.00)" in row
    assert not (root / "report").exists()  # --table writes nothing
    res = subprocess.run([sys.executable, "-m", "bench.report", str(root), "--no-html"], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0 and (root / "report" / "report.md").exists()
    assert not (root / "report" / "report.html").exists()


def test_table_labels_each_repeat(tmp_path):
    from tests.fixtures import repeats

    root = tmp_path / "s"
    for i, rec in enumerate(repeats(n=2) + repeats(n=2, **SLOW_BY_OPS)):
        write(root, str(i), rec)
    res = subprocess.run([sys.executable, "-m", "bench.report", str(root), "--table"], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    labels = [ln.split(" | ")[0].lstrip("| ") for ln in res.stdout.splitlines() if ln.startswith("| full") or
              ln.startswith("| lora")]
    assert labels == ["full (repeat 0)", "full (repeat 1)", "lora_all r=8 (repeat 0)", "lora_all r=8 (repeat 1)"]
