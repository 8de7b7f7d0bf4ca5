"""Projected records: reported as projections, never in a measured verdict."""
from bench.job import run_job
from bench.report.explain import aggregate, settings
from bench.report.load import load_records
from bench.report.report import build_report
from tests.conftest import FAST, compose_cfg
from tests.fixtures import repeats, write


def test_a_projected_record_never_enters_a_measured_verdict(tmp_path):
    for i, r in enumerate(repeats() + repeats(strategy="lora_all", rank=8, step=30.0)):
        write(tmp_path / "measured", str(i), r)
    for s in ("full", "lora_all"):
        run_job(compose_cfg([*FAST, f"strategy={s}", "project.gpu=RTX4090", "data=random"]), tmp_path / "p" / s)
    df = load_records([tmp_path])
    assert (df.kind == "projected").sum() == 2
    agg = aggregate(df, host_noise=False)
    assert len(agg) == 2 and set(agg.label) == {"full", "lora_all r=8"}  # the measured ones only
    assert all(g.kind.eq("measured").all() for _, g in settings(df))
    md = build_report([tmp_path], tmp_path / "out", html=False).read_text()
    head = md.split("## PROJECTED, not measured")[0]
    assert "RTX4090" not in head  # every projected figure is under the projection's heading
    projected = md.split("## PROJECTED, not measured")[1]
    assert "| lora_all r=8 | RTX4090 |" in projected and "projected" in projected.lower()


def test_every_projected_table_states_its_error_on_published_runs(tmp_path):
    import json

    from bench.report.projection import stated_error

    path = tmp_path / "error.json"
    path.write_text(json.dumps({"step": {"median_abs_error": 0.039, "rows": 2},
                                "memory": {"median_abs_error": 0.084, "rows": 7}}))
    assert stated_error(path).endswith("step time 4% over 2; peak memory 8% over 7.")
    assert "not known" in stated_error(tmp_path / "absent.json")


def test_fp32_adapters_are_named_in_the_projected_table(tmp_path):
    for name, extra in (("bf16", []), ("fp32", ["lora.adapter_dtype=fp32"])):
        run_job(compose_cfg([*FAST, "strategy=lora_qk", "project.gpu=H100", "project.dtype=bf16", "data=random",
                             *extra]), tmp_path / name)
    md = build_report([tmp_path], tmp_path / "out", html=False).read_text()
    assert "| lora_qk r=8 | H100 |" in md and "| lora_qk r=8 adapter_dtype=fp32 | H100 |" in md


def test_a_fit_within_the_reserves_stated_error_of_the_capacity_is_flagged(tmp_path):
    import json

    import pandas as pd

    from bench.report.projection import at_the_edge, reserve_error

    path = tmp_path / "error.json"
    path.write_text(json.dumps({"reserve": {"median_abs_error": 0.10, "rows": 2}}))
    assert reserve_error(path) == 0.10 and reserve_error(tmp_path / "absent.json") is None
    gib = 2 ** 30
    dg = pd.DataFrame({"device": "RTX4090", "configuration": ["a", "b", "c", "d"], "memory_bytes": 24 * gib,
                       "reserved_bytes": [12 * gib, 23.1 * gib, 26.5 * gib, 27 * gib],
                       "fits": [True, True, False, False]})
    # |reserve - 24| <= 10% of the reserve: 23.1 (0.9 <= 2.31) and 26.5 (2.5 <= 2.65), not 12 nor 27 (3 > 2.7)
    line = at_the_edge(dg, 0.10)
    assert line.startswith("RTX4090: within the reserve's stated error (10%) of the 24 GiB")
    assert "b (23.1 GiB, fits), c (26.5 GiB, does not fit)" in line and "a (" not in line and "d (" not in line
    assert at_the_edge(dg, None) is None


def test_a_data_parallel_projection_reports_its_ranks_link_and_communication(tmp_path):
    for s in ("full", "lora_all"):
        run_job(compose_cfg([*FAST, f"strategy={s}", "project.gpu=RTX4090", "data=random", "parallel=fsdp",
                             "project.devices=4", "dist.mixed_precision=bf16"]), tmp_path / "p" / s)
    md = build_report([tmp_path], tmp_path / "out", html=False).read_text()
    projected = md.split("## PROJECTED, not measured")[1]
    assert "4 ranks, FSDP (ZeRO-3, shard=full, bf16 mixed precision)" in projected
    assert "4 GPUs per node on PCIe4" in projected
    assert "exposed comm ms" in projected and "all-gather GB" in projected
    lora = next(ln for ln in projected.splitlines() if ln.startswith("- lora_all r=8 on RTX4090, 4 ranks"))
    assert "frozen or not (full fine-tuning: " in lora and "LoRA removes" in lora


def test_a_fit_that_needs_the_allocators_retry_says_the_step_will_be_slower(tmp_path):
    import dataclasses
    import json

    from bench.record.schema import Record

    run_job(compose_cfg([*FAST, "strategy=full", "project.gpu=H100", "data=random"]), tmp_path / "p")
    path = next(tmp_path.rglob("metrics.json"))
    rec = Record.from_json(json.loads(path.read_text()))
    rec.projection.devices[0] = dataclasses.replace(rec.projection.devices[0], alloc_retries=2)  # as a full card would
    path.write_text(json.dumps(rec.to_json()))
    md = build_report([tmp_path], tmp_path / "out", html=False).read_text()
    assert ("full on H100: fits only as the caching allocator, out of room, returns its cache and retries, "
            "2 time(s) a step") in md and "slower than projected" in md


def test_a_host_bound_projection_names_its_operations_and_autograd_nodes(tmp_path):
    from bench.record.store import read_record

    for st in ("full", "lora_all"):
        run_job(compose_cfg([*FAST, f"strategy={st}", "project.gpu=H100", "data=random"]), tmp_path / st)
    lora = read_record(tmp_path / "lora_all" / "metrics.json").projection
    assert lora.devices[0].bound == "host" and round(lora.devices[0].host_node_us, 6) == 1.8  # a tiny model on an H100
    md = build_report([tmp_path], tmp_path / "out", html=False).read_text()
    line = next(ln for ln in md.splitlines() if ln.startswith("- lora_all r=8 on H100: projected"))
    assert f"{lora.ops_per_step:,} operations at 2.3 + " in line
    assert f", {lora.autograd_nodes:,} autograd nodes at 1.8 us)" in line
