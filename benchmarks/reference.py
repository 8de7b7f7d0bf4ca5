"""Run studies and file their reports as reference results; rebuild the index.

    python benchmarks/reference.py minimind_88_cpu depth ...   # run these studies, then index
    python benchmarks/reference.py --index                     # only rebuild results/reference/README.md
    python benchmarks/reference.py --rebuild                   # rebuild every report from its records
    python benchmarks/reference.py --file OUT/minimind_88 minimind_88   # file a sweep run elsewhere (a GPU)
    python benchmarks/reference.py --file SWEEP NAME --ref-dir DIR      # the same into another folder

Each study runs as `python -m bench.run +study=<name>` into results/multirun/ref_<name>; its
report and records (metrics.json, steps.jsonl) are copied to results/reference/<name>/<machine>/,
where <machine> is the records' own machine label. Nothing is edited by hand: the index quotes
each report's verdict paragraphs as the report states them. report.html is not filed (it embeds
the plots again); `python -m bench.report <dir>/records --out <dir>` makes it.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REF = ROOT / "results" / "reference"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# References that are a command line rather than a study preset: the README's own sweep.
COMMANDS = {"quickstart": ["-m", "strategy=full,lora_all,lora_qk,lora_last", "lora.rank=2,8,32"]}


def run_study(name: str) -> Path:
    sweep = ROOT / "results" / "multirun" / f"ref_{name}"
    if sweep.exists():
        shutil.rmtree(sweep)
    t = time.perf_counter()
    args = COMMANDS.get(name, [f"+study={name}"])
    rc = subprocess.call([sys.executable, "-m", "bench.run", *args, "train.progress=false",
                          f"hydra.sweep.dir={sweep}"], cwd=ROOT)
    print(f"{name}: exit {rc} after {time.perf_counter() - t:.0f} s", flush=True)
    if not (sweep / "report").is_dir():  # the sweep never got going: nothing to file, and nothing is removed
        raise SystemExit(f"error: {name}: the sweep wrote no report (exit {rc}); nothing filed")
    return file_sweep(sweep, name, f"`python -m bench.run {' '.join(args)}`, exit status {rc}, "
                                   f"{time.perf_counter() - t:.0f} s wall time")


def file_sweep(sweep: Path, name: str, how: str, ref: Path = REF) -> Path:
    """Copy a finished sweep's records and report to <ref>/<name>/<machine>/ (ref: results/reference)."""
    records = sorted(sweep.glob("*/metrics.json"))
    machine = next((json.loads(p.read_text()).get("env", {}).get("machine") for p in records
                    if json.loads(p.read_text()).get("env")), "unknown machine")
    dest = ref / name / slug(machine)
    if dest.exists():
        shutil.rmtree(dest)
    # report.html embeds every plot again: rebuilt on demand (python -m bench.report), never filed.
    shutil.copytree(sweep / "report", dest / "report", ignore=shutil.ignore_patterns("report.html"))
    for p in records:
        job = dest / "records" / p.parent.name
        job.mkdir(parents=True, exist_ok=True)
        for f in ("metrics.json", "steps.jsonl"):
            if (p.parent / f).exists():
                shutil.copy(p.parent / f, job / f)
        for probe in sorted((p.parent / "probes").glob("*/metrics.json")):  # a memory-budget search's probes
            (job / "probes" / probe.parent.name).mkdir(parents=True, exist_ok=True)
            for f in ("metrics.json", "steps.jsonl"):
                if (probe.parent / f).exists():
                    shutil.copy(probe.parent / f, job / "probes" / probe.parent.name / f)
    (dest / "COMMAND.md").write_text(
        f"{how}, on {machine}, finished {time.strftime('%Y-%m-%d %H:%M %Z')}.\n"
        f"Rebuild the report from the records: `python -m bench.report {_shown(dest)}/records "
        f"--out <dir>`.\n")
    return dest


def _shown(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def index(ref: Path = REF) -> None:
    lines = ["# Reference results", "",
             "Written by `python benchmarks/reference.py`: each study run with the project's own command on the "
             "machine named, its report and records copied here unedited. The verdicts below are quoted from "
             "each report.", ""]
    for report in sorted(ref.glob("*/*/report/report.md")):
        study, machine = report.parts[-4], report.parts[-3]
        command = (report.parent.parent / "COMMAND.md")
        lines += [f"## {study} on {machine}", "",
                  command.read_text().strip() if command.exists() else "", "",
                  f"Report: [{report.relative_to(ref)}]({report.relative_to(ref)})", ""]
        for para in report.read_text().split("\n\n"):
            if para.startswith("## Setting") or para.startswith("Verdict."):
                lines.append(("**" + para.lstrip("# ") + "**") if para.startswith("## ") else "> " + para)
                lines.append("")
    for text in sorted(ref.glob("*/*/*.txt")):  # studies whose result is a benchmark script's output
        lines += [f"## {text.parts[-3]} on {text.parts[-2]}: {text.name}", "", "```", text.read_text().strip(), "```", ""]
    (ref / "README.md").write_text("\n".join(lines))
    print(f"wrote {ref / 'README.md'}")


def rebuild() -> None:
    """Regenerate each filed report from its filed records, with the code as it is now."""
    from bench.report import build_report

    for records in sorted(REF.glob("*/*/records")):
        report = records.parent / "report"
        shutil.rmtree(report, ignore_errors=True)
        print(f"rebuilt: {build_report([records.relative_to(ROOT)], report, html=False)}", flush=True)


if __name__ == "__main__":
    import os

    os.chdir(ROOT)
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    if args[0] == "--file" and len(args) in (3, 5):
        ref = REF
        if len(args) == 5:
            if args[3] != "--ref-dir":
                sys.exit(f"error: {args[3]!r}: expected --ref-dir DIR after --file SWEEP NAME")
            ref = Path(args[4]).resolve()
        sweep = Path(args[1])
        if not (sweep / "report").is_dir():
            sys.exit(f"error: {sweep} has no report/ (is it a finished sweep? python -m bench.report {sweep} makes one)")
        print(f"filed: {file_sweep(sweep, args[2], f'`+study={args[2]}` (benchmarks/gpu_check.py)', ref)}")
        index(ref)
        sys.exit(0)
    if "--rebuild" in args:
        rebuild()
    for name in [a for a in args if not a.startswith("--")]:
        print(f"filed: {run_study(name)}", flush=True)
    index()
