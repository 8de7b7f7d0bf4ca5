"""Figures the README and docs/ quote must stand, verbatim, in the committed reference output they cite."""
import json
import re

from tests.conftest import ROOT

FRONT = (ROOT / "README.md").read_text()
DOCS = {p.name: p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))}
README = FRONT + "\n" + "\n".join(DOCS.values())  # the front page and the pages it links
REF = ROOT / "results" / "reference"


def _section(title: str) -> str:
    return README.split(f"## {title}")[1].split("\n## ")[0]


def test_the_readme_is_a_front_page_and_every_link_resolves():
    assert len(FRONT.splitlines()) <= 200
    assert FRONT.splitlines().index("## Two commands") < 30 and "## A sample of the report" in FRONT
    linked = set(re.findall(r"\]\(docs/([a-z_]+\.md)\)", FRONT))
    assert linked == set(DOCS), "every docs page linked from the README, and only those"
    for name, text in {"README.md": FRONT, **{f"docs/{k}": v for k, v in DOCS.items()}}.items():
        base = ROOT if name == "README.md" else ROOT / "docs"
        for target in re.findall(r"\]\((?!https?:|#)([^)#]+)", text):
            assert (base / target).exists(), (name, target)


def test_the_install_is_cis():
    ci = (ROOT / ".ci" / "run").read_text()
    extras = re.search(r'pip install --quiet --no-compile -e "\.\[([a-z,]+)\]"', ci).group(1)
    assert f'pip install -e ".[{extras}]"' in FRONT


def _quoted(section: str) -> list[str]:
    lines = [ln[2:] if ln.startswith("> ") else ln for ln in section.splitlines()]
    return [q for q in lines if q.startswith(("| ", "- lora", "Verdict.", "Cost model", "step ms: median"))]


def test_the_front_page_sample_is_quoted_verbatim_from_the_filed_readme_sweep():
    report = (REF / "quickstart" / "amd-epyc-2-threads" / "report" / "report.md").read_text()
    quoted = _quoted(FRONT.split("## A sample of the report")[1].split("\n## ")[0])
    assert len(quoted) > 10
    assert [q for q in quoted if q not in report] == []
    command = (REF / "quickstart" / "amd-epyc-2-threads" / "COMMAND.md").read_text()
    assert "python -m bench.run -m strategy=full,lora_all,lora_qk,lora_last lora.rank=2,8,32`" in command


def test_the_first_sample_is_quoted_verbatim():
    report = (REF / "quickstart" / "intel-r-xeon-r-processor-2-threads" / "report" / "report.md").read_text()
    quoted = _quoted(_section("A sample of the report, as first filed"))
    assert len(quoted) > 10
    assert [q for q in quoted if q not in report] == []


def test_backend_figures_are_quoted_verbatim():
    amd = REF / "backends" / "amd-epyc-2-threads"
    text = (amd / "interleaved.txt").read_text()
    section = README.split("**Our layers against PEFT.**")[1].split("\n## ")[0]
    block = section.split("(40 rounds of 3 steps per layer):")[1].split("```")[1]
    lines = [ln for ln in block.splitlines() if ln.strip()]
    assert len(lines) == 5 and all(ln in text for ln in lines)
    rows = [ln for ln in section.splitlines() if ln.startswith("| lora_")]
    assert len(rows) == 4
    for row in rows:  # every ratio and interval of the table, as the benchmark printed it
        for cell in row.strip("| ").split(" | ")[1:]:
            ratio, interval = cell.rstrip(")").split(" (")
            assert f"/peft median {ratio} " in text and f"of the median {interval})" in text, cell
    assert "fused/peft median 0.940 (range 0.818-0.953)" in (amd / "backends.txt").read_text()
    assert "fused/peft median 0.944" in (REF / "backends" / "intel-r-xeon-r-processor-2-threads" / "backends.txt").read_text()
    for figure in ("layout    74.4 us, the layer's    33.6 us", "layout    82.2 us, the layer's    42.3 us"):
        assert figure in (amd / "fused_layout.txt").read_text(), figure


def test_overhead_figures_are_in_the_filed_outputs():
    out = "".join((REF / "overhead" / "amd-epyc-2-threads" / f).read_text() for f in ("study.txt", "interleaved.txt"))
    for figure in ("27.058 ms", "27.057 ms", "-0.77%", "-1.66%", "-0.14%", "-10.26%", "-22.20%", "+6.89%"):
        assert figure in out, figure


def test_measured_explanation_and_profile_overhead_are_in_the_filed_outputs():
    launch = (REF / "launch_bound" / "intel-r-xeon-r-processor-2-threads" / "report" / "report.md").read_text()
    quoted = README.split("Its profiled step: \"")[1].split("\"")[0]
    assert quoted.replace("\n  ", " ") in launch
    for figure in ("1.39x slower", "7.01 vs 5.05 ms per step", "95% interval 1.35-1.41x"):
        assert figure in launch, figure
    out = (REF / "overhead" / "intel-r-xeon-r-processor-2-threads" / "profile_overhead.txt").read_text()
    for figure in ("13.988 ms", "13.974 ms", "median 1.006", "0.997-1.011", "3.0%"):
        assert figure in out, figure


def test_fixes_and_memory_budget_figures_are_in_the_filed_reports():
    machine = "intel-r-xeon-r-processor-2-threads"
    fixes = (REF / "fixes" / "amd-epyc-2-threads" / "report" / "report.md").read_text()
    section = _section("Making LoRA not slower: the fixes, measured")
    for figure in ("1.55x (1.48-1.69)", "1.41x (1.35-1.53)", "1.49x (1.34-1.89)", "0.69x (0.58-0.77)",
                   "0.68x (0.62-0.73)", "0.58x (0.57-0.75)", "| 3.4 |", "| 4.8 |", "| 7.3 |", "| 10.9 |",
                   "| 2174 |", "| 1707 |", "| 1369 |", "| 4.47 |", "| 4.07 |", "| 2.80 |", "| 2.88 |", "| 1.88 |",
                   "0.97x (0.92-1.23)", "framework overhead +1.48 ms", "framework overhead +0.41 ms",
                   "adapter matmuls +1.44 ms", "adapter matmuls +1.72 ms"):
        assert figure in fixes, figure
        assert figure.strip("| ").split(" (")[0].split(" ms")[0].split(" +")[-1] in section, figure
    earlier = (REF / "fixes" / machine / "report" / "report.md").read_text()
    assert "1.36x (1.33-1.41)" in earlier and "1.33x (1.30-1.37)" in earlier
    budget = (REF / "memory_budget" / machine / "report" / "report.md").read_text()
    for figure in ("| 15 | 1,269 |", "| 23 | 1,613 |", "| 31 | 1,848 |", "1.27x full", "1.46x full"):
        assert figure in budget, figure
        assert all(part.strip().replace(" full", "") in section for part in figure.strip("| ").split("|")
                   if part.strip()), figure


def test_the_fused_adamw_figures_are_in_the_filed_report():
    report = (REF / "adamw" / "amd-epyc-2-threads" / "report" / "report.md").read_text()
    for row in ("| lora_all r=8 | none | 6.55 | 1.58x (1.26-1.98), slower |",
                "| lora_all r=8 | AdamW fused | 5.23 | 1.30x (1.03-1.63), slower |",
                "| full | AdamW fused | 3.23 | 0.82x (0.66-1.03), no difference |",
                "| full | AdamW fused | 181.44 | 0.94x (0.84-1.05), no difference |", "| 2174 |", "| 1672 |",
                "| 1369 |", "| 1029 |", "| lora_all r=8 | AdamW fused | 123.92 | 0.63x (0.56-0.70), faster |"):
        assert row in report, row
    doc = DOCS["fixes.md"]
    for figure in ("502 fewer", "against 340", "1.58x plain full's step\n  (1.26-1.98)", "1.30x (1.03-1.63)",
                   "0.82x (0.66-1.03)", "0.94x (0.84-1.05)", "LoRA stays 0.63x"):
        assert figure in doc, figure


def test_distributed_figures_are_in_the_filed_report():
    report = (REF / "distributed" / "intel-r-xeon-r-processor-2-threads" / "report" / "report.md").read_text()
    section = _section("Several processes: DDP, FSDP and what travels")
    for figure in ("0.94x; 95% interval 0.88-1.04x", "0.74x; 95% interval 0.69-0.80x", "0.75x; 95% interval 0.70-0.85x",
                   "0.69x; 95% interval 0.54-0.81x", "0.94x; 95% interval 0.82-1.06x", "0.77x; 95% interval 0.63-0.86x",
                   "all-reduces 0.04 MiB per step, 2.3% of full fine-tuning's", "communication -12.13 ms",
                   "blocked in communication 7.48 vs 19.60 ms", "drifted by -26%",
                   "all-gathers 3.29 MiB per step, 102.4% of full fine-tuning's (the frozen weights travel too), "
                   "reduce-scatters 0.04 MiB per step, 2.3% of full fine-tuning's"):
        assert figure in report, figure
        ratio, _, interval = figure.partition("; 95% interval ")
        quoted = f"{ratio} ({interval.rstrip('x')})" if interval else figure.replace(" vs ", " against ")
        assert quoted in section.replace("\n", " "), quoted


def test_variants_figures_are_in_the_filed_report():
    report = (REF / "variants" / "amd-epyc-2-threads" / "report" / "report.md").read_text()
    doc = DOCS["variants.md"]
    rows = [ln for ln in doc.splitlines() if ln.startswith(("| full checkpointing", "| lora_all r=8 "))
            and any(f"| {v} |" in ln for v in ("checkpointing", "QLoRA", "DoRA"))]
    assert len(rows) == 8 and all(row in report for row in rows)  # the table, verbatim
    front = _section("The variants slow runs use")
    for figure in ("1.77x", "1.57-2.01", "+192.62", "0.25x", "1.30x", "1.15-1.47", "1.93x", "1.42x", "1.25-1.61",
                   "0.13x", "1.25x", "1.15-1.37", "2.06x", "0.74x"):
        assert figure in front and figure in report, figure
    for figure in ("| 0.74x | 0.67-0.80 |", "| 1.30x | 1.19-1.43 |", "| 2.06x | 1.89-2.25 |", "| 0.96x | 0.87-1.04 |",
                   "| 26.43 |", "| 104.81 |", "| 79.92 |", "| 41.48 |", "| 5.44 |", "| 2.00x |", "| 1.92x |",
                   "| 1.98x |", "| 1.47x |"):
        assert figure in report, figure
        assert figure.strip("| ").split(" | ")[0] in doc, figure


def test_the_extended_memory_budget_rows_are_in_the_filed_report():
    report = (REF / "memory_budget" / "amd-epyc-2-threads" / "report" / "report.md").read_text()
    rows = [ln for ln in DOCS["variants.md"].splitlines() if ln.startswith("| ") and "| 1.25 |" in ln]
    assert len(rows) == 8 and all(row in report for row in rows)


def test_the_projection_figures_are_in_the_filed_projected_reports():
    front = _section("PROJECTED, not measured: models and GPUs this machine cannot hold")
    report = next((REF / "projection").glob("*/report/report.md")).read_text()
    section = report.split("### Projected: llama3_1_8b, batch 1 x seq 2048")[1].split("\n### ")[0]
    for row in ("| full | H100 | 74.79 | 77.38 | yes |", "| full | RTX4090 | 74.79 | 84.33 | no |",
                "| lora_all r=8 quant=nf4 | RTX4090 | 20.73 | 22.84 | yes |",
                "| lora_all r=8 quant=nf4 checkpointing=blocks | RTX4090 | 9.00 | 11.27 | yes |",
                "| lora_qv r=8 checkpointing=blocks | RTX4090 | 18.45 | 19.89 | yes |",
                "| lora_all r=8 dora=True checkpointing=blocks | RTX4090 | 18.55 | 20.59 | yes |",
                "| lora_all r=8 quant=nf4 | H100 | 20.73 | 22.84 | yes | 4 | 358.4 | 1.05x |",
                "| lora_all r=8 dora=True | H100 | 40.79 | 42.12 | yes | 2 | 267.5 | 0.78x |"):
        assert row in section, row
    for figure in ("74.79", "77.38", "84.33", "22.84", "11.27", "19.89-20.59", "1.05x", "0.78x", "0.96x", "1.09x",
                   "1.08x"):
        assert figure in front, figure
    fits = [ln for ln in section.splitlines() if "| RTX4090 |" in ln and "| yes |" in ln]
    assert len(fits) == 5 and all("checkpointing=blocks" in ln or "quant=nf4" in ln for ln in fits)
    m88 = next((REF / "projection_88").glob("*/report/report.md")).read_text()
    assert "| lora_all r=8 +head | RTX3090 | 3.89 | 5.10 | yes | 165 | 110.1 | 0.96x |" in m88
    assert "lora_all r=8 +head on RTX4090: projected 1.09x full fine-tuning's step" in m88
    check = (REF / "published" / "check.md").read_text()
    for figure in ("check rows 3% over 2 rows", "step rows: 6% over 8 rows", "memory rows: 8% over 7 rows",
                   "ratio rows: 44% over 3 rows", "reserve rows: 5% over 7 rows", "| -60% |", "| -73% |", "| -2% |",
                   "| -8% |", "| -3% |", "| -7% |", "| +5% |", "| -1% |", "| -23% |", "| +3% |", "median absolute error 5% over 5 rows"):
        assert figure in check, figure
    for figure in ("6% over eight", "-3% and +3%", "-3% to -8%", "+5%", "0.62", "0.45", "0.59", "8% over seven",
                   "2-9%", "60-73%", "median 5% over seven", "+3% for full", "-4% to -5%", "-23% for DoRA",
                   "-7% and -1%", "44%"):
        assert figure in front, figure
    fit = json.loads((ROOT / "bench" / "project" / "achieved.json").read_text())
    assert (fit["matmul"], fit["bandwidth"], fit["per_gpu"]["A100-80GB"]["matmul"],
            fit["per_gpu"]["H100-HBM2e-96GB"]["matmul"]) == (0.59, 0.79, 0.62, 0.45)
    m91 = next((REF / "projection_91").glob("*/report/report.md")).read_text()
    assert "| lora_all r=2 +head | RTX4090 | 3.88 | 5.09 | yes | 165 | 81.3 | 1.08x |" in m91


def test_the_self_projection_figures_are_in_the_filed_check():
    check = (REF / "projection_check" / "amd-epyc-2-threads" / "self_projection.md").read_text()
    for figure in ("60 cells; median absolute error of the ratio 0.055", "largest 0.204", "58 of 60 cells",
                   "inside the measured ratio's 95% interval in 30 of 60, the others a median 0.043 outside it",
                   "| 512 | 16 | lora_all | 0.55 | 0.27-0.86 | 0.35 |", "| 128 | 1024 | lora_all | 1.04 | 0.95-1.13 | 0.89 |",
                   "per autograd node"):
        assert figure in check, figure
    doc = DOCS["projection.md"]
    for figure in ("0.055", "0.204", "58 of 60", "30\n  of 60", "0.043", "(0.89 projected against 1.04",
                   "0.27-0.86, against 0.35"):
        assert figure in doc, figure


def test_the_published_check_is_quoted_verbatim():
    check = (REF / "published" / "check.md").read_text()
    quoted = [ln.strip() for ln in DOCS["projection.md"].split("Verbatim:")[1].split("How far that reaches")[0].splitlines()
              if ln.strip()]
    assert len(quoted) >= 10 and [q for q in quoted if q not in check] == []
