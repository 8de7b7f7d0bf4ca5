"""Study presets (conf/study/*.yaml): list them, and expand one into its jobs as Hydra would.

    python -m bench.studies                 # the studies, their job counts and expected durations
    python -m bench.studies minimind_88     # its jobs, one line of overrides each
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from bench.cli import CONF_DIR, group_options

REF = CONF_DIR.parent / "results" / "reference"


def expand(study: str, extra: list[str] = ()) -> list[list[str]]:
    """The override list of every job of `+study=<study>`, in the order the sweep runs them."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"+study={study}", *extra], return_hydra_config=True)
    params = [f"{k}={v}" for k, v in (cfg.hydra.sweeper.params or {}).items()]
    parsed = OverridesParser.create().parse_overrides([*params, *extra])
    batches = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return [list(job) for batch in batches for job in batch]


def expected(study: str, jobs: int, ref: Path = REF) -> str:
    """The expected duration, from the study's filed runs (results/reference/<study>/*/COMMAND.md):
    their wall seconds per job, times today's job count. Filed runs that predate the paired
    baseline (every LoRA job also steps full fine-tuning: up to half again) say so."""
    timed = []
    for cmd in sorted(ref.glob(f"{study}/*/COMMAND.md")):
        m = re.search(r"(\d+) s wall time", cmd.read_text())
        records = list((cmd.parent / "records").glob("*/metrics.json"))
        if m and records:
            paired = any('"paired": {' in p.read_text() for p in records[:20])
            timed.append((int(m.group(1)) / len(records), cmd.parent.name, paired))
    if not timed:
        return "no filed run to time it by"
    per_job, machine, paired = max(timed)  # the slowest filed machine: an estimate, not a promise
    total = per_job * jobs
    when = f"{total / 60:.0f} min" if total >= 90 else f"{total:.0f} s"
    return (f"about {when} (filed on {machine}: {per_job:.1f} s a job"
            + ("" if paired else "; filed before the paired baseline, which adds up to half again") + ")")


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if not argv:
        for name in group_options("study"):
            jobs = len(expand(name))
            print(f"{name}: {jobs} jobs, {expected(name, jobs)}")
        return 0
    if argv[0] not in group_options("study"):
        print(f"error: study={argv[0]!r} is not a known study; choose from: {', '.join(group_options('study'))}",
              file=sys.stderr)
        return 2
    for job in expand(argv[0], argv[1:]):
        print(" ".join(job))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
