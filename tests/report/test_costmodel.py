"""The cost model (bench/report/costmodel.py): one pair of constants per comparison, so the priced
terms add up to the predicted ratio, whatever calibrations a combined report mixes."""
import pytest

from bench.report.load import load_records
from tests.fixtures import record
from tests.report.test_explain import _agg
from bench.report.explain import explain


def _calibrated(theta, c, **kw):
    return record(calibration={"matmul_flops_per_s": theta, "op_overhead_s": c, "matmul_shape": [1, 1, 1],
                               "precision": "fp32"}, **kw)


def test_a_combined_report_prices_each_comparison_with_one_set_of_constants(tmp_path):
    """The probe's case: three sweeps of one machine, their calibrations 66-125 GFLOP/s and 4.2-8.95 us
    apart, and a configuration with fewer FLOPs and fewer operations: it must not be predicted slower."""
    recs = [_calibrated(125e9, 4.2e-6, step=20.0, repeat=0, flops=2e9, ops=2000),
            _calibrated(66.6e9, 8.95e-6, step=21.0, repeat=1, flops=2e9, ops=2000),
            _calibrated(66.6e9, 8.95e-6, strategy="lora_qk", rank=8, step=15.0, spread=(14.5, 15.5), repeat=0,
                        flops=1.5e9, ops=1800),
            _calibrated(70e9, 8.0e-6, strategy="lora_qk", rank=8, step=15.2, spread=(14.5, 15.5), repeat=1,
                        flops=1.5e9, ops=1800)]
    agg = _agg(tmp_path, *recs)
    row, full = agg.loc["lora_qk r=8"], agg.loc["full"]
    assert row.predicted_vs_full < 1
    text = explain(row, full)
    theta, c = row.matmul_flops_per_s, row.op_overhead_s  # the configuration's own (median) constants
    base = 1e3 * (2e9 / theta + 2000 * c)
    flops_ms, ops_ms = 1e3 * (-0.5e9) / theta, 1e3 * (-200) * c
    assert f"FLOPs {flops_ms:+.2f} ms at {theta / 1e9:.0f} GFLOP/s" in text and f"operations {ops_ms:+.2f} ms" in text
    assert row.predicted_vs_full == pytest.approx((base + flops_ms + ops_ms) / base)
    from bench.report.costmodel import calibration_note

    note = calibration_note(load_records([tmp_path]))
    assert note is not None and "66.6-125.0 GFLOP/s" in note and "4.20-8.95 us" in note


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings as hsettings, strategies as st  # noqa: E402


@hsettings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.floats(50e9, 200e9), st.floats(2e-6, 10e-6)), min_size=4, max_size=4),
       st.floats(0.3, 1.0), st.floats(0.3, 1.0))
def test_terms_that_all_point_faster_never_predict_slower(cals, flop_share, op_share):
    import tempfile
    from pathlib import Path

    tmp = Path(tempfile.mkdtemp())
    recs = [_calibrated(*cals[0], repeat=0, flops=2e9, ops=2000), _calibrated(*cals[1], repeat=1, flops=2e9, ops=2000),
            *[_calibrated(*cals[2 + r], strategy="lora_qk", rank=8, step=15.0, spread=(14.5, 15.5), repeat=r,
                          flops=2e9 * flop_share, ops=int(2000 * op_share)) for r in (0, 1)]]
    agg = _agg(tmp, *recs)
    assert agg.loc["lora_qk r=8"].predicted_vs_full <= 1 + 1e-12
