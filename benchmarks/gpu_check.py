"""The project's GPU check: run it on a machine with a CUDA device.

    python benchmarks/gpu_check.py OUT_DIR

1. the whole test suite, CUDA tests included (tests/test_cuda.py);
2. the minimind_88 study (minimind_v1, batch 32, seq 512, bf16): full against lora_all with
   the head at ranks 2 and 8, lora_qk and lora_last, 3 repeats;
3. the phase-timing overhead study on the GPU.
Everything lands in OUT_DIR: the sweeps' records, the logs, and summary.md made by the
project's own summary and overhead commands.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sh(args: list[str], log: Path) -> int:
    print("$", " ".join(args), flush=True)
    t = time.perf_counter()
    with log.open("a") as f:
        f.write(f"$ {' '.join(args)}\n")
        f.flush()
        rc = subprocess.call(args, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
        f.write(f"# exit {rc} after {time.perf_counter() - t:.0f} s\n")
    print(f"  exit {rc} after {time.perf_counter() - t:.0f} s", flush=True)
    return rc


def main(out: Path) -> int:
    import torch

    if not torch.cuda.is_available():
        print("error: no CUDA device; this check is for a GPU machine", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    log = out / "gpu_check.log"
    py = sys.executable
    rcs = [sh([py, "-m", "pytest", "-q", "-rs", "tests/"], log)]
    rcs.append(sh([py, "-m", "bench.run", "+study=minimind_88", "train.progress=false",
                   f"hydra.sweep.dir={out / 'minimind_88'}"], log))
    rcs.append(sh([py, "-m", "bench.run", "+study=overhead", "device=cuda", "train.progress=false",
                   f"hydra.sweep.dir={out / 'overhead'}"], log))
    with (out / "summary.md").open("w") as f:
        f.write(f"# GPU check on {torch.cuda.get_device_name()} (torch {torch.__version__})\n\n")
        f.write("## +study=minimind_88: the report's verdict and tables are in minimind_88/report/\n\n")
        f.flush()
        subprocess.call([py, "-m", "bench.report", str(out / "minimind_88"), "--table"], cwd=ROOT, stdout=f)
        f.write("\n## Phase-timing overhead (python benchmarks/overhead.py)\n\n```\n")
        f.flush()
        subprocess.call([py, "benchmarks/overhead.py", str(out / "overhead")], cwd=ROOT, stdout=f,
                        env={"PYTHONPATH": str(ROOT), **__import__("os").environ})
        f.write("```\n")
    print((out / "summary.md").read_text())
    return max(rcs)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1])))
