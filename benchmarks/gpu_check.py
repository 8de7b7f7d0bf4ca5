"""The project's GPU check: run it on a machine with a CUDA device.

    python benchmarks/gpu_check.py OUT_DIR [--only PART,PART...]

Parts, in order (each fits one 10-minute call of a lent GPU machine; pick some with --only):
  tests         the whole test suite, CUDA tests included (tests/test_cuda.py)
  minimind_88   +study=minimind_88: minimind_v1, batch 32 x seq 512, bf16; full against lora_all
                with the head at ranks 2 and 8, lora_qk and lora_last, 3 repeats
  launch_bound  +study=launch_bound device=cuda: the launch-bound corner on the GPU
  crossover_gpu +study=crossover_gpu: lora_all and lora_qk against full over width x tokens
  backends      +study=backends device=cuda: the eager and fused layers against PEFT's
  interleaved   benchmarks/backends_interleaved.py on the GPU: the same layers and the frozen floor,
                step by step in one process, at minimind_v1 2 x 64 fp32 and 32 x 512 bf16
  overhead      +study=overhead device=cuda: does phase timing change the step?
  fixes_gpu     +study=fixes_gpu device=cuda: eager, fused, compiled and CUDA graphs, bf16
  memory_budget +study=memory_budget device=cuda train.memory_budget_gb=8: tokens/s at equal memory
  distributed   +study=distributed_gpu: full, lora_all, lora_qk on 1 process and on every GPU (DDP, FSDP)
Each sweep's records and report land in OUT_DIR/<part>/, the log in OUT_DIR/gpu_check.log,
summary.md from the project's own `python -m bench.report --table`, and everything packed in
OUT_DIR/gpu_check.tar.gz (one file to fetch). File them with benchmarks/reference.py --file.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import time
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STUDIES = {"minimind_88": [], "launch_bound": ["device=cuda"], "crossover_gpu": [],
           "backends": ["device=cuda"], "overhead": ["device=cuda"], "fixes_gpu": ["device=cuda"],
           "memory_budget": ["device=cuda", "train.memory_budget_gb=8", "train.seq_len=512",
                             "search.max_batch=1024"],
           "distributed_gpu": ["device=cuda"]}
# benchmarks/backends_interleaved.py on the GPU: the launch-bound step of the CPU reference, and
# MiniMind #88's batch in bf16.
INTERLEAVED = [["device=cuda"], ["device=cuda", "train.batch_size=32", "train.seq_len=512", "train.precision=bf16"]]
PARTS = ["tests", "interleaved", *STUDIES]


def sh(args: list[str], log: Path, stdout: Path | None = None) -> int:
    """Run one command from the repository root; its output goes to the log (or to `stdout`,
    its errors still to the log)."""
    print("$", " ".join(args), flush=True)
    t = time.perf_counter()
    with log.open("a") as f, (stdout.open("a") if stdout else nullcontext(f)) as o:
        f.write(f"$ {' '.join(args)}\n")
        f.flush()
        rc = subprocess.call(args, cwd=ROOT, stdout=o, stderr=f if stdout else subprocess.STDOUT,
                             env={"PYTHONPATH": str(ROOT), **os.environ})
        f.write(f"# exit {rc} after {time.perf_counter() - t:.0f} s\n")
    print(f"  exit {rc} after {time.perf_counter() - t:.0f} s", flush=True)
    return rc


def main(out: Path, parts: list[str]) -> int:
    import torch

    if not torch.cuda.is_available():
        print("error: no CUDA device; this check is for a GPU machine", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    log, py, rcs = out / "gpu_check.log", sys.executable, []
    for part in parts:
        if part == "tests":
            rcs.append(sh([py, "-m", "pytest", "-q", "-rs", "tests/"], log))
            continue
        if part == "interleaved":
            for overrides in INTERLEAVED:
                with (out / "interleaved.txt").open("a") as f:
                    f.write(f"$ python benchmarks/backends_interleaved.py --rounds 40 {' '.join(overrides)}\n")
                rcs.append(sh([py, "benchmarks/backends_interleaved.py", "--rounds", "40", *overrides], log,
                              stdout=out / "interleaved.txt"))
            continue
        rcs.append(sh([py, "-m", "bench.run", f"+study={part}", *STUDIES[part], "train.progress=false",
                       f"hydra.sweep.dir={out / part}"], log))
    with (out / "summary.md").open("w") as f:
        f.write(f"# GPU check on {torch.cuda.get_device_name()} (torch {torch.__version__})\n\n")
        for part in [p for p in parts if p in STUDIES]:
            f.write(f"## +study={part} (report: {part}/report/report.md)\n\n")
            f.flush()
            subprocess.call([py, "-m", "bench.report", str(out / part), "--table"], cwd=ROOT, stdout=f)
        for part, script, title in (("overhead", "overhead.py", "Phase-timing overhead"),
                                    ("backends", "backends.py", "Our layers against PEFT")):
            if part in parts:  # the project's own benchmark script on the part's sweep
                f.write(f"\n## {title} (python benchmarks/{script})\n\n```\n")
                f.flush()
                subprocess.call([py, f"benchmarks/{script}", str(out / part)], cwd=ROOT, stdout=f,
                                env={"PYTHONPATH": str(ROOT), **os.environ})
                f.write("```\n")
    with tarfile.open(out / "gpu_check.tar.gz", "w:gz") as tar:
        for p in sorted(out.iterdir()):
            if p.name != "gpu_check.tar.gz":
                tar.add(p, arcname=p.name)
    print((out / "summary.md").read_text())
    return max(rcs, default=0)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of: {', '.join(PARTS)}")
    args = ap.parse_args()
    chosen = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in PARTS]
    if unknown:
        sys.exit(f"error: --only {unknown[0]!r} is not one of {', '.join(PARTS)}")
    sys.exit(main(args.out, chosen))
