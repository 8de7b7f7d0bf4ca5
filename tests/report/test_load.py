"""Loading records into rows: typed reads, and the facts the analysis takes from each plan."""
import pandas as pd

from bench.report.load import COLUMNS, load_records, variant_label, varying_keys, with_ratios
from tests.fixtures import SLOW_BY_OPS, record, write


def test_rows_carry_the_plan_facts_and_the_figures(tmp_path):
    write(tmp_path, "0", record())
    write(tmp_path, "1", record(**SLOW_BY_OPS))
    write(tmp_path, "2", record(strategy="lora_all", rank=8, stops_early=True, step=12.0, spread=(11.0, 13.0)))
    df = load_records([tmp_path])
    assert list(df.columns) == [*COLUMNS, "step_samples", "paired_samples"] and list(df.status) == ["ok"] * 3
    assert df.step_samples[0][:2] == [19.0, 19.2] and len(df.step_samples[0]) == 11  # read from steps.jsonl
    rows = {p.rsplit("/", 1)[-1]: r for p, r in df.set_index("path").iterrows()}
    assert rows["0"].uses_lora is False and rows["1"].uses_lora is True and rows["1"].backend == "native"
    assert rows["2"].backward_stops_early is True and rows["1"].backward_stops_early is False
    assert rows["1"].step_ms == 30.0 and rows["1"].ops_per_step == 3000


def test_ratios_are_to_the_median_full_record_of_the_same_setting(tmp_path):
    write(tmp_path, "0", record(step=20.0))
    write(tmp_path, "1", record(step=24.0, repeat=1))
    write(tmp_path, "2", record(**SLOW_BY_OPS))
    df = with_ratios(load_records([tmp_path]))
    lora = df[df.strategy == "lora_all"].iloc[0]
    assert lora.step_vs_full == 30.0 / 22.0 and lora.ops_vs_full == 3.0 and lora.flops_vs_full == 0.7


def test_labels_name_only_what_varies():
    df = pd.DataFrame({"strategy": ["lora_all", "lora_all"], "rank": [8, 8], "dropout": [0.0, 0.1],
                       "lr": [1e-3, 1e-3]})
    keys = varying_keys(df)
    assert keys == ["dropout"]
    assert [variant_label(r, keys) for _, r in df.iterrows()] == ["lora_all r=8 dropout=0.0",
                                                                  "lora_all r=8 dropout=0.1"]


def test_an_ok_record_missing_a_section_or_holding_a_bad_time_is_named_and_left_out(tmp_path):
    from tests.fixtures import record, write

    write(tmp_path, "0", record())
    no_time = record(strategy="lora_qk", rank=8)
    del no_time["time"]
    write(tmp_path, "1", no_time)
    bad = record(strategy="lora_all", rank=8)
    bad["time"]["step_ms"]["median"] = None  # NaN is written as null
    bad["time"]["forward_ms"]["median"] = -1.0
    write(tmp_path, "2", bad)
    df = load_records([tmp_path]).set_index("path")
    assert df.loc[str(tmp_path / "0"), "status"] == "ok"
    assert df.loc[str(tmp_path / "1"), "status"] == "unreadable"
    assert df.loc[str(tmp_path / "1"), "reason"].endswith("status ok, but time: missing")
    reason = df.loc[str(tmp_path / "2"), "reason"]
    assert "time.step_ms.median: missing" in reason and "time.forward_ms.median: -1.0 is not a positive time" in reason


def test_records_given_twice_count_once_and_the_copies_are_named(tmp_path):
    import shutil

    from bench.report import build_report
    from tests.fixtures import record, write

    for i, rec in enumerate([record(started="2026-12-01T10:00:00"),
                             record(strategy="lora_qk", rank=8, started="2026-12-01T10:00:05")]):
        rec["identity"]["started"] = rec.pop("started")
        write(tmp_path / "sweep", str(i), rec)
    write(tmp_path / "sweep", "2", record(status="duplicate", same_as=str(tmp_path / "sweep" / "0")))
    shutil.copytree(tmp_path / "sweep", tmp_path / "again")
    # The same folder twice is read once; a copy in another folder is named.
    df = load_records([tmp_path / "sweep", tmp_path / "sweep", tmp_path / "again"])
    assert (df.status == "ok").sum() == 2 and (df.status == "copy").sum() == 2
    md = build_report([tmp_path / "sweep", tmp_path / "sweep"], tmp_path / "twice", html=False).read_text()
    assert "same record as" not in md and "1 jobs measured a configuration already measured" in md
    assert set(df[df.status == "copy"].reason) == {f"the same record as {tmp_path / 'sweep' / n} (counted once)"
                                                   for n in "01"}
    md = build_report([tmp_path / "sweep", tmp_path / "again"], tmp_path / "out", html=False).read_text()
    assert "2 measured records" in md and "## Given twice" in md and "| 1 |" in md  # one repeat each
