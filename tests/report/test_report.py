import pandas as pd
import pytest

from bench.report import build_report
from tests.conftest import reported, FAST, ROOT, run_cli
from tests.fixtures import record, write

PLOTS = ["step_time_vs_rank", "time_split", "memory_split", "loss_vs_time"]


def test_report_tables_ratios_and_failures(sweep, tmp_path):
    md = build_report([sweep], tmp_path / "out").read_text()
    time_table = md.split("### Time")[1].split("###")[0]
    rows = [ln for ln in time_table.splitlines() if ln.startswith("| ")][1:]
    assert [r.split("|")[1].strip() for r in rows] == ["full", "lora_all r=8"]   # full once, two repeats
    assert "| 1.43x |" in rows[1]                                                 # 30 / median(20, 22)
    failed = md.split("## Records that did not end ok")[1]
    for status in ("invalid", "unreadable", "missing"):
        assert f"| {status} |" in failed
    assert "Reported once" in md
    csv = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert len(csv) == 7 and set(csv.status) == {"ok", "invalid", "unreadable", "duplicate", "missing"}
    assert csv.loc[csv.strategy == "lora_all", "step_vs_full"].item() == pytest.approx(30 / 21)


def test_plots_are_written_and_embedded(sweep, tmp_path):
    out = tmp_path / "out"
    build_report([sweep], out)
    html = (out / "report.html").read_text()
    for name in PLOTS:
        png, svg = out / f"{name}.png", out / f"{name}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        assert svg.stat().st_size > 5000 and "<svg" in svg.read_text()[:500]
    assert html.count("src='data:image/png;base64,") == len(PLOTS)
    assert "<script>" not in html and "&lt;script&gt;" in html   # strings from records are escaped
    # Every table sits in a box that scrolls sideways: a wide one is never cut off at the right.
    assert html.count("<div class='scroll'><table") == html.count("<table") > 0 and ".scroll{overflow-x:auto" in html


def test_the_setting_title_names_the_model_source_backend_and_variants_all_share(tmp_path):
    from tests.fixtures import record, write

    def qlora(**kw):
        rec = record(strategy="lora_all", rank=8, **kw)
        rec["config"]["model"]["path"] = "/ckpt/my-model"
        rec["config"]["quant"], rec["config"]["train"]["checkpointing"] = {"base": "nf4"}, "blocks"
        rec["config"]["lora"]["dora"] = True
        return rec

    full = record()
    full["config"]["model"]["path"] = "/ckpt/my-model"
    full["config"]["train"]["checkpointing"] = "blocks"
    write(tmp_path / "s", "0", full)
    write(tmp_path / "s", "1", qlora())
    md = build_report([tmp_path / "s"], tmp_path / "out", html=False).read_text()
    title = next(ln for ln in md.splitlines() if ln.startswith("## Setting 1:"))
    assert "tiny from /ckpt/my-model" in title and "LoRA by native" in title and "nf4 4-bit base (QLoRA)" in title
    assert "DoRA" in title and "activation checkpointing: blocks" in title
    # The rows name what is on even though nothing varies: a QLoRA-only sweep does not read as plain LoRA.
    assert "| lora_all r=8 quant=nf4 dora=True checkpointing=blocks |" in md


def test_report_of_nothing_still_writes(tmp_path):
    (tmp_path / "empty").mkdir()
    md = build_report([tmp_path / "empty"], tmp_path / "out").read_text()
    assert "0 measured records" in md and (tmp_path / "out" / "report.html").exists()




def test_a_real_sweep_ends_with_its_report(tmp_path):
    sweep = tmp_path / "sweep"
    res = run_cli(["-m", "strategy=full,lora_all,lora_last", *FAST, f"hydra.sweep.dir={sweep}"], cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    md = (sweep / "report" / "report.md").read_text()
    for label in ("full", "lora_all r=8", "lora_last r=8"):
        assert reported(md, label), label
    assert "Cost model constants, measured on this machine" in md or "| full |" not in md
    if "### Time" in md:  # a setting with stable jobs (a busy runner can leave none): its plots
        assert all((sweep / "report" / f"{p}.png").exists() for p in PLOTS)


def test_crossover_map_with_an_oom_cell(tmp_path):
    root = tmp_path / "cross"
    n = 0
    for dim in (64, 128):
        for batch in (2, 8):
            for strategy, rank, step in (("full", None, 10.0 * dim / 64), ("lora_all", 8, 12.0 * dim / 64)):
                status = "oom" if (dim, batch, strategy) == (128, 8, "lora_all") else "ok"
                rec = record(strategy=strategy, rank=rank, step=step, spread=(step - 0.1, step + 0.1), status=status)
                rec["config"]["model"]["dim"] = dim
                rec["config"]["train"]["batch_size"] = batch
                rec["work"]["tokens_per_step"] = batch * 64
                write(root, str(n), rec)
                n += 1
    md = build_report([root], tmp_path / "out").read_text()
    assert "Crossover: lora_all r=8" in md
    png = next((tmp_path / "out").glob("crossover_*lora_all_r8.png"))
    assert png.stat().st_size > 5000
    assert md.count("## Setting") == 4  # each width x batch is its own setting
    assert "| oom |" in md.split("## Records that did not end ok")[1]


def test_many_settings_keep_their_tables_but_not_their_plots(tmp_path):
    root = tmp_path / "wide"
    for n, dim in enumerate(range(32, 32 * 10, 32)):  # 9 widths: 9 settings
        for strategy, rank, step in (("full", None, 10.0), ("lora_all", 8, 12.0)):
            rec = record(strategy=strategy, rank=rank, step=step, spread=(step - 0.1, step + 0.1))
            rec["config"]["model"]["dim"] = dim
            write(root, f"{n}-{strategy}", rec)
    out = tmp_path / "out"
    md = build_report([root], out).read_text()
    assert md.count("### Time") == 9 and "9 settings: their plots are left out" in md
    assert not list(out.glob("time_split*.png")) and list(out.glob("crossover_*.png"))
    build_report([root], tmp_path / "all", all_plots=True)
    assert len(list((tmp_path / "all").glob("time_split*.png"))) == 9
