"""The project's GPU check, time-boxed: as much of the GPU evidence as fits one short call.

    python benchmarks/gpu_check.py WORK_DIR --budget-s 420 --tarball $OUT/gpu_check.tar.gz
    python benchmarks/gpu_check.py WORK_DIR --rehearse --budget-s 60   # the same, on a CPU, tiny

Parts run in priority order (the headline first). Each has a duration estimate and starts only if
it fits the time left; at the deadline a running part gets SIGINT (a sweep then writes the running
job's record as interrupted and reports what it finished), then SIGKILL after a grace period.
Everything is packed into one tarball (under 16 MiB: plots are dropped first if it is larger),
and the last lines printed are a summary that stands on its own: on a lent GPU they may be all
that comes back. docs/gpu.md gives the one command a lent GPU runs and how its results are filed.

--rehearse runs the same orchestration on the CPU with tiny sizes (device=cpu, a few steps) and
files the sweeps with benchmarks/reference.py --file into WORK_DIR/filed/: CI runs it, so the GPU
path cannot break on anything a CPU can catch.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # bench, from a checkout that is not installed (a lent GPU's)
TARBALL_LIMIT = 16 * 2**20


def grace_s(budget_s: float) -> float:
    """After SIGINT, a sweep finishes its step, writes the record and builds its report."""
    return min(20.0, 0.1 * budget_s)


def reserve_s(budget_s: float) -> float:
    """The end of the budget kept for the summary, the filing and the tarball (a few report
    commands: seconds each)."""
    return min(30.0, 0.25 * budget_s)
TINY = ["device=cpu", "model=tiny", "train.batch_size=2", "train.seq_len=16", "train.steps=3",
        "train.warmup_steps=1", "train.eval_batches=1", "train.precision=fp32", "train.profile=false",
        "train.progress=false"]


@dataclass
class Part:
    """One step of the check: a command run from the repository root, with its duration estimate.
    `study`: the sweep's name when the part is a `bench.run` sweep (its records land in WORK/<name>)."""
    name: str
    what: str
    estimate_s: float
    argv: list[str]
    study: str | None = None
    stdout: str | None = None  # a file under WORK for the part's output (a benchmark script's table)


@dataclass
class Outcome:
    name: str
    status: str  # ok | failed | stopped (deadline) | skipped (did not fit) | error (could not start)
    seconds: float = 0.0
    rc: int | None = None
    note: str = ""
    jobs: dict[str, int] = field(default_factory=dict)


def _sweep(name: str, work: Path, study: str, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "bench.run", f"+study={study}", *args, "train.progress=false",
            f"hydra.sweep.dir={work / name}"]


# Estimates on the GPU are set from the sizes (jobs x steps) before any GPU run was filed; each
# run's summary prints the real durations, and the next estimate should come from them.
def plan(work: Path, rehearse: bool) -> list[Part]:
    """The parts, in priority order."""
    py = sys.executable
    tests = Part("cuda_tests", "the CUDA tests alone (tests/test_cuda.py)", 15 if rehearse else 90,
                 [py, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_cuda.py"])
    if rehearse:
        sweeps = [("minimind_88", "minimind_88", 20, ["repeat=0", *TINY]),
                  # Two repeats: the summary's tables label repeats, as the GPU's 3-repeat sweeps need.
                  ("launch_bound", "launch_bound", 14, ["repeat=0,1", *TINY]),
                  ("fixes_gpu", "fixes_gpu", 12, ["repeat=0", "+cell=launch_bound", "+fix=eager,fused", *TINY]),
                  ("backends", "backends", 30, ["repeat=0", *TINY]),
                  ("variants", "variants", 25, ["repeat=0", "+cell=launch_bound", *TINY]),
                  ("projected_88", "minimind_88", 15, ["repeat=0", "project.gpu=H200", *TINY])]
    else:
        sweeps = [("minimind_88", "minimind_88", 150, []),
                  ("launch_bound", "launch_bound", 30, ["device=cuda"]),
                  # The launch-bound cell is where CUDA graphs can matter; two repeats fit the budget.
                  ("fixes_gpu", "fixes_gpu", 120, ["device=cuda", "repeat=0,1", "+cell=launch_bound"]),
                  ("backends", "backends", 240, ["device=cuda", "repeat=0"]),
                  # QLoRA (torchao's NF4: bitsandbytes does not fit the carried wheels), DoRA, checkpointing.
                  ("variants", "variants", 150, ["device=cuda", "repeat=0,1"]),
                  # The same configurations as minimind_88, PROJECTED onto the lent H200 on fake tensors
                  # (the CPU does it): the filed pair holds the projection against the measurement.
                  ("projected_88", "minimind_88", 90, ["project.gpu=H200", "repeat=0"]),
                  ("crossover_gpu", "crossover_gpu", 400, []),
                  ("overhead", "overhead", 60, ["device=cuda"]),
                  ("memory_budget", "memory_budget", 240, ["device=cuda", "train.memory_budget_gb=8",
                                                           "train.seq_len=512", "search.max_batch=1024"]),
                  ("distributed_gpu", "distributed_gpu", 200, ["device=cuda"])]
    parts = [tests]
    # LORA_BENCH_GPU_CHECK_ESTIMATE=name=seconds,...: a part's estimate set by hand (its test makes one
    # never fit, so that skipping is exercised whatever the machine's speed).
    forced = dict(kv.split("=", 1) for kv in os.environ.get("LORA_BENCH_GPU_CHECK_ESTIMATE", "").split(",") if "=" in kv)
    sweeps = [(n, st, float(forced.get(n, e)), a) for n, st, e, a in sweeps]
    for name, study, estimate, args in sweeps:
        what = f"+study={study} {' '.join(a for a in args if a not in TINY)}".strip()
        parts.append(Part(name, what, estimate, _sweep(name, work, study, args), study=name))
    # Our layers, PEFT's and the frozen floor step by step in one process (the launch-bound step of
    # the CPU reference; on the GPU also MiniMind #88's batch in bf16), after the headline sweeps.
    cells = [TINY] if rehearse else [["device=cuda"], ["device=cuda", "train.batch_size=32", "train.seq_len=512",
                                                       "train.precision=bf16"]]
    rounds = "2" if rehearse else "40"
    for i, cell in enumerate(cells):
        parts.insert(4 + i, Part(f"interleaved_{i}", f"benchmarks/backends_interleaved.py {' '.join(cell)}",
                                 10 if rehearse else 60,
                                 [py, "benchmarks/backends_interleaved.py", "--rounds", rounds, *cell],
                                 stdout="interleaved.txt"))
    return parts


def _env() -> dict[str, str]:
    paths = [str(ROOT), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def _stop(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGINT to the part's process group (a sweep stops between steps and keeps its records);
    SIGKILL if it is still there after the grace period."""
    from bench.signals import stop_group

    stop_group(proc, ((signal.SIGINT, grace_s), (signal.SIGKILL, 10.0)))


def run_part(part: Part, deadline: float, log: Path, grace: float) -> Outcome:
    """Run one part if its estimate fits before `deadline` (a time.monotonic() value); a part still
    running at `deadline - grace` is stopped, so that it has ended by the deadline."""
    left = deadline - grace - time.monotonic()
    if part.estimate_s > left:
        return Outcome(part.name, "skipped", note=f"needs ~{part.estimate_s:.0f} s, {max(left, 0):.0f} s left")
    t0 = time.monotonic()
    with log.open("a") as f:
        f.write(f"\n$ {' '.join(part.argv)}\n")
        f.flush()
        out = (log.parent / part.stdout).open("a") if part.stdout else f
        try:
            proc = subprocess.Popen(part.argv, cwd=ROOT, stdout=out, stderr=f if part.stdout else subprocess.STDOUT,
                                    env=_env(), start_new_session=True)
        except OSError as e:
            return Outcome(part.name, "error", note=str(e))
        finally:
            if out is not f:
                out.close()
        stopped = False
        # Stop early enough that the grace period still ends before the deadline.
        while proc.poll() is None:
            if time.monotonic() >= deadline - grace:
                stopped = True
                _stop(proc, grace)
                break
            time.sleep(0.2)
        rc = proc.wait()
        f.write(f"# exit {rc} after {time.monotonic() - t0:.0f} s{' (stopped at the deadline)' if stopped else ''}\n")
    status = "stopped" if stopped else ("ok" if rc == 0 else "failed")
    return Outcome(part.name, status, time.monotonic() - t0, rc)


def job_statuses(sweep: Path) -> dict[str, int]:
    """How many of a sweep's job records ended in each status (read leniently: this is a summary)."""
    counts: dict[str, int] = {}
    for p in sorted(sweep.glob("*/metrics.json")):
        try:
            status = json.loads(p.read_text()).get("status", "unreadable")
        except (OSError, ValueError):
            status = "unreadable"
        counts[status] = counts.get(status, 0) + 1
    return counts


def _verdict(sweep: Path) -> str:
    report = sweep / "report" / "report.md"
    if not report.exists():
        return "(no report)"
    para = next((p for p in report.read_text().split("\n\n") if p.startswith("Verdict.")), "(no verdict)")
    return " ".join(para.split())[:700]


def write_summary(work: Path, parts: list[Part], outcomes: list[Outcome], header: str) -> str:
    """summary.md: each sweep's table (the project's own `bench.report --table`), then the lines
    that must survive alone: what ran, how long, how its jobs ended, and each headline verdict."""
    by_name = {p.name: p for p in parts}
    tables = []
    for o in outcomes:
        part = by_name[o.name]
        if part.study and (work / part.study).exists():
            o.jobs = job_statuses(work / part.study)
            table = subprocess.run([sys.executable, "-m", "bench.report", str(work / part.study), "--table"],
                                   cwd=ROOT, env=_env(), capture_output=True, text=True)
            tables.append(f"## {part.name}: {part.what}\n\n{table.stdout.strip() or table.stderr.strip()[-400:]}\n")
    lines = [f"# {header}", ""]
    for o in outcomes:
        jobs = ", ".join(f"{n} {s}" for s, n in sorted(o.jobs.items()))
        lines.append(f"- {o.name}: {o.status}" + (f" in {o.seconds:.0f} s" if o.seconds else "")
                     + (f", exit {o.rc}" if o.rc not in (None, 0) else "") + (f"; jobs: {jobs}" if jobs else "")
                     + (f" ({o.note})" if o.note else ""))
    for o in outcomes:
        part = by_name[o.name]
        if part.study and (work / part.study).exists():
            lines.append(f"- {o.name} verdict: {_verdict(work / part.study)}")
    text = "\n".join(tables) + "\n" + "\n".join(lines) + "\n"
    (work / "summary.md").write_text(text)
    return text


def pack(work: Path, tarball: Path, limit: int = TARBALL_LIMIT) -> list[str]:
    """One tarball of the work folder; what had to be left out to stay under `limit`."""
    tarball.parent.mkdir(parents=True, exist_ok=True)
    # Rebuildable first (plots come back from the records with bench.report), then the steps.
    for leave_out in ((), (".png", ".svg", ".html"), (".png", ".svg", ".html", "steps.jsonl")):
        with tarfile.open(tarball, "w:gz") as tar:
            for p in sorted(work.rglob("*")):
                if p.is_file() and p.resolve() != tarball.resolve() and not p.name.endswith(leave_out):
                    tar.add(p, arcname=str(p.relative_to(work)))
        if tarball.stat().st_size <= limit:
            break
    return list(leave_out)


def file_rehearsal(work: Path, parts: list[Part], outcomes: list[Outcome], log: Path) -> list[str]:
    """Rehearsal only: file each sweep with benchmarks/reference.py --file into work/filed/."""
    filed = []
    for o in outcomes:
        part = next(p for p in parts if p.name == o.name)
        if part.study and (work / part.study / "report").exists():
            r = subprocess.run([sys.executable, "benchmarks/reference.py", "--file", str(work / part.study),
                                part.study, "--ref-dir", str(work / "filed")], cwd=ROOT, env=_env(),
                               capture_output=True, text=True)
            with log.open("a") as f:
                f.write(r.stdout + r.stderr)
            filed.append(f"{part.study}: {'filed' if r.returncode == 0 else f'filing failed ({r.returncode})'}")
    return filed


def main(work: Path, budget_s: float, rehearse: bool, tarball: Path | None, only: list[str] | None) -> int:
    start = time.monotonic()
    deadline = start + budget_s - reserve_s(budget_s)
    import torch

    if not rehearse and not torch.cuda.is_available():
        print("error: no CUDA device; this check is for a GPU machine (--rehearse runs it on a CPU)", file=sys.stderr)
        return 2
    work.mkdir(parents=True, exist_ok=True)
    tarball = tarball or work / "gpu_check.tar.gz"
    log = work / "gpu_check.log"
    parts = [p for p in plan(work, rehearse) if only is None or p.name in only]
    outcomes = []
    for part in parts:
        outcome = run_part(part, deadline, log, grace_s(budget_s))
        outcomes.append(outcome)
        print(f"{part.name}: {outcome.status}" + (f" in {outcome.seconds:.0f} s" if outcome.seconds else "")
              + (f" ({outcome.note})" if outcome.note else ""), flush=True)
    device = "CPU rehearsal" if rehearse else torch.cuda.get_device_name()
    header = (f"GPU check on {device}: torch {torch.__version__}, CUDA {torch.version.cuda or 'none'}, "
              f"budget {budget_s:.0f} s, {time.strftime('%Y-%m-%d %H:%M %Z')}")
    summary = write_summary(work, parts, outcomes, header)
    extra = file_rehearsal(work, parts, outcomes, log) if rehearse else []
    dropped = pack(work, tarball)
    size = tarball.stat().st_size / 2**20
    if tarball.parent.resolve() != work.resolve():  # beside the tarball too: the one file to read first
        (tarball.parent / "summary.md").write_text(summary)
    print(summary, end="")
    for line in extra:
        print(f"- {line}")
    print(f"- tarball: {tarball} ({size:.1f} MiB{'; left out: ' + ', '.join(dropped) if dropped else ''}); "
          f"total {time.monotonic() - start:.0f} s of a {budget_s:.0f} s budget", flush=True)
    bad = [o for o in outcomes if o.status in ("failed", "error")]
    return 1 if bad else 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path, help="working folder: every part's records, the log, summary.md")
    ap.add_argument("--budget-s", type=float, default=420.0, help="the whole check's time budget (default 420)")
    ap.add_argument("--rehearse", action="store_true", help="on the CPU, tiny sizes: the orchestration only")
    ap.add_argument("--tarball", type=Path, default=None, help="where the tarball goes (default WORK/gpu_check.tar.gz)")
    ap.add_argument("--only", default=None, help="comma-separated part names (default: all, in priority order)")
    args = ap.parse_args()
    names = [p.name for p in plan(args.work, args.rehearse)]
    chosen = None if args.only is None else [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = [p for p in chosen or [] if p not in names]
    if unknown:
        sys.exit(f"error: --only {unknown[0]!r} is not one of {', '.join(names)}")
    if args.budget_s <= 0:
        sys.exit(f"error: --budget-s {args.budget_s:g} must be positive")
    sys.exit(main(args.work, args.budget_s, args.rehearse, args.tarball, chosen))
