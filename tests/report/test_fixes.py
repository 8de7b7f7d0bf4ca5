"""The fixes section: each configuration against plain full fine-tuning and against full run the
same way, with the fix's cost; and nothing of it where a sweep tried no fix."""
import pandas as pd

from bench.report import build_report
from bench.report.fixes import fixes_table
from bench.report.load import load_records
from tests.fixtures import record, write


def _rec(strategy, rank, step, impl="eager", compile=False, compile_s=None, n=0):
    rec = record(strategy=strategy, rank=rank, step=step, spread=(step * 0.99, step * 1.01), repeat=n)
    rec["config"]["lora"]["impl"] = impl
    rec["config"]["train"]["compile"] = compile
    rec["config"]["train"]["cuda_graphs"] = False
    rec["identity"]["config_key"] += f"-{impl}-{compile}"
    rec["time"]["compile_s"] = compile_s
    return rec


def _sweep(root):
    jobs = [("full", None, 10.0, "eager", False, None), ("lora_all", 8, 13.0, "eager", False, None),
            ("lora_all", 8, 10.2, "fused", False, None), ("full", None, 8.0, "eager", True, 30.0),
            ("lora_all", 8, 9.6, "eager", True, 41.0)]
    for n, f in enumerate((0.995, 1.005)):  # two repeats: the verdicts need the noise between them
        for i, (s, r, step, impl, comp, cs) in enumerate(jobs):
            write(root, f"{n}{i}", _rec(s, r, step * f, impl, comp, cs, n=n))
    return root


def test_each_fix_is_set_against_plain_full_and_full_run_the_same_way(tmp_path):
    df = load_records([_sweep(tmp_path / "sweep")])
    table = fixes_table(df[df.status == "ok"]).set_index(["configuration", "fix"])
    assert set(table.index) == {("full", "none"), ("lora_all r=8", "none"), ("lora_all r=8", "fused"),
                                ("full", "compiled"), ("lora_all r=8", "compiled")}
    assert table.loc[("lora_all r=8", "none"), "vs plain full"].startswith("1.30x")
    assert table.loc[("lora_all r=8", "fused"), "vs plain full"].startswith("1.02x")
    # Compiled LoRA against compiled full (9.6 / 8.0) and against plain full (9.6 / 10.0).
    assert table.loc[("lora_all r=8", "compiled"), "vs full with the same mode"].startswith("1.20x")
    assert table.loc[("lora_all r=8", "compiled"), "vs plain full"].startswith("0.96x")
    assert table.loc[("lora_all r=8", "compiled"), "compile s"] == "41.0"
    assert table.loc[("full", "none"), "compile s"] == ""


def test_the_report_has_a_fixes_section_only_where_fixes_were_tried(tmp_path):
    md = build_report([_sweep(tmp_path / "sweep")], tmp_path / "out", html=False).read_text()
    section = md.split("## Fixes: does each one remove LoRA's slowdown")[1].split("\n## ")[0]
    assert "lora_all r=8 with fix fused: level with full fine-tuning run the same way" in section
    assert "lora_all r=8 with fix compiled: still slower than full fine-tuning run the same way" in section
    assert md.count("## Setting") == 2  # eager and compiled are two settings; fused is a variant
    plain = tmp_path / "plain"
    for i, (s, r, step) in enumerate([("full", None, 10.0), ("lora_all", 8, 13.0)]):
        write(plain, str(i), _rec(s, r, step))
    assert "## Fixes" not in build_report([plain], tmp_path / "out2", html=False).read_text()


def test_records_older_than_the_fixes_read_as_eager(tmp_path):
    write(tmp_path / "old", "0", record())
    df = load_records([tmp_path / "old"])
    assert df.iloc[0]["mode"] == "eager" and pd.isna(df.iloc[0].compile_s)


def test_another_adamw_is_a_fix_of_its_own_set_against_plain_full(tmp_path):
    jobs = [("full", 10.0, "default", False), ("lora_all", 13.0, "default", False), ("full", 9.0, "fused", False),
            ("lora_all", 12.5, "fused", False), ("full", 8.0, "fused", True)]
    for n, f in enumerate((0.995, 1.005)):
        for i, (s, step, adamw, comp) in enumerate(jobs):
            rec = _rec(s, 8 if s != "full" else None, step * f, compile=comp, n=n)
            rec["config"]["train"]["adamw_impl"] = adamw
            rec["identity"]["config_key"] += f"-{adamw}"
            write(tmp_path, f"{n}{i}", rec)
    table = fixes_table(load_records([tmp_path])).set_index(["configuration", "fix"])
    assert {("full", "AdamW fused"), ("lora_all r=8", "AdamW fused"), ("full", "compiled + AdamW fused")} <= set(table.index)
    assert table.loc[("full", "AdamW fused"), "vs plain full"].startswith("0.90x")
