"""Each variant against the same configuration without it: references, ratios, intervals, sentences."""
import math

import pytest

from bench.report import stats, variants
from bench.report.explain import aggregate
from bench.report.load import load_records
from tests.fixtures import repeats, write

CATS = ("base_matmul", "adapter_matmul", "adapter_other", "attention", "norm_activation_other", "dequantize",
        "dora_norm", "recompute", "compiled", "communication", "gradients", "optimizer", "framework")


def _variant(recs, checkpointing="none", quant=None, dora=False, **attr):
    """Records with the variant's config keys set and a profiled step whose categories are `attr`."""
    for r in recs:
        r["config"]["train"]["checkpointing"] = checkpointing
        if r["plan"]["uses_lora"]:
            r["config"]["quant"] = {"base": quant or "none"}
            r["config"]["lora"]["dora"] = dora
        cats = {c: attr.get(c, 1.0) for c in CATS}
        r["attribution"] = {"step_ms": sum(cats.values()), "categories": cats, "ops": {c: 1 for c in CATS}}
        r["identity"]["config_key"] += f"-{checkpointing}-{quant}-{dora}"
    return recs


def _agg(tmp_path):
    recs = [_variant(repeats(step=20.0)),
            _variant(repeats(step=26.0), checkpointing="blocks", recompute=5.0),
            _variant(repeats(strategy="lora_all", rank=8, step=30.0)),
            _variant(repeats(strategy="lora_all", rank=8, step=45.0), quant="nf4", dequantize=12.0),
            _variant(repeats(strategy="lora_all", rank=8, step=36.0), dora=True, dora_norm=2.0)]
    for i, r in enumerate(x for rs in recs for x in rs):
        write(tmp_path, str(i), r)
    return aggregate(load_records([tmp_path]), host_noise=False).set_index("label", drop=False)


def test_each_variant_finds_its_reference(tmp_path):
    agg = _agg(tmp_path)
    assert list(agg.index) == ["full", "full checkpointing=blocks", "lora_all r=8", "lora_all r=8 quant=nf4",
                               "lora_all r=8 dora=True"]
    assert agg.baseline.tolist() == [True, False, False, False, False]  # checkpointed full is not the baseline
    ref = variants.reference(agg, agg.loc["lora_all r=8 quant=nf4"], "quant")
    assert ref.label == "lora_all r=8"
    assert variants.reference(agg, agg.loc["full checkpointing=blocks"], "checkpointing").label == "full"


def test_the_ratio_to_the_reference_and_its_interval(tmp_path):
    agg = _agg(tmp_path)
    q, lora = agg.loc["lora_all r=8 quant=nf4"], agg.loc["lora_all r=8"]
    e = variants.relative(q, lora)
    assert e.ratio == pytest.approx(1.5, rel=1e-9)  # 45 / 30: the shared full baseline cancels
    se = math.sqrt(q.vs_full_se ** 2 + lora.vs_full_se ** 2)
    half = stats.t_quantile(0.975, int(min(q.vs_full_df, lora.vs_full_df))) * se
    assert e.lo == pytest.approx(1.5 * math.exp(-half)) and e.hi == pytest.approx(1.5 * math.exp(half))
    # against plain full fine-tuning the variant's own estimate is the answer
    c = variants.relative(agg.loc["full checkpointing=blocks"], agg.loc["full"])
    assert c.ratio == pytest.approx(1.3) and (c.lo, c.hi) == pytest.approx((agg.loc["full checkpointing=blocks"].vs_full_lo,
                                                                          agg.loc["full checkpointing=blocks"].vs_full_hi))


def test_the_sentences_name_the_measured_term(tmp_path):
    table, lines = variants.table(_agg(tmp_path))
    assert list(table.variant) == ["checkpointing", "QLoRA", "DoRA"]
    text = "\n".join(lines)
    assert "lora_all r=8 quant=nf4: 1.50x lora_all r=8's step" in text
    assert "dequantization +11.00 ms on the profiled step (largest)" in text
    assert "full checkpointing=blocks: 1.30x full's step" in text and "recompute +4.00 ms" in text
    assert "+6.00 ms per step (+30% of full fine-tuning's)" in text
    assert "DoRA's weight norm +1.00 ms" in text
