"""The noise between runs on a machine: what one sweep's repeats cannot see.

A sweep's repeats lie within a minute of each other, and on a shared host the ratio of two
configurations moves with the host's state (its speed, who else is running) on a longer scale:
8 runs of the README sweep, minutes apart, spread more than any one run's repeats say
(benchmarks/coverage.py). That extra spread is measured once per machine:

    python benchmarks/coverage.py --runs 8 --write-noise

which writes results/reference/noise/<machine>.json: tau2, the variance of a run's log ratio
beyond its own repeats' (pooled over the sweep's configurations), and rep_var, the variance
between repeats within a run, with their degrees of freedom and the date. The report adds tau2
to the variance of every ratio measured on that machine, and uses rep_var as the between-repeat
variance of paired ratios wherever the sweep's own pooled estimate is smaller (or missing: a
sweep of one repeat). A term older than EXPIRES_DAYS is not applied (the
host may have changed): the report says so. It was measured on one setting (the README sweep)
and is applied to the machine's every setting; the report names it wherever it is used.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

NOISE_DIR = Path(__file__).resolve().parents[2] / "results" / "reference" / "noise"
EXPIRES_DAYS = 30


@dataclass
class HostNoise:
    machine: str
    tau2: float      # between-run variance of a log ratio, beyond the runs' own repeats
    rep_var: float   # between-repeat variance of a log ratio within a run
    df: int          # degrees of freedom of rep_var
    runs: int
    measured: str    # YYYY-MM-DD
    how: str

    @property
    def sd_pct(self) -> float:
        return 100 * (self.tau2 ** 0.5)

    def expired(self, today: float | None = None) -> bool:
        age = (today or time.time()) - time.mktime(time.strptime(self.measured, "%Y-%m-%d"))
        return age > EXPIRES_DAYS * 86400


def slug(machine: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", machine.lower()).strip("-")


def path_for(machine: str, root: Path = NOISE_DIR) -> Path:
    return root / f"{slug(machine)}.json"


def read(machine: str | None, root: Path = NOISE_DIR) -> HostNoise | None:
    """The machine's term, or None where none was measured (or the file is not one)."""
    if not machine:
        return None
    try:
        return HostNoise(**json.loads(path_for(machine, root).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def write(noise: HostNoise, root: Path = NOISE_DIR) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    p = path_for(noise.machine, root)
    p.write_text(json.dumps(asdict(noise), indent=2) + "\n")
    return p


def sentence(noise: HostNoise | None, machine: str | None) -> str:
    """What the report says about the term for a setting's machine."""
    if noise is None:
        return (f"No between-run noise term is filed for {machine}: the intervals see the noise between this "
                f"sweep's repeats only (python benchmarks/coverage.py --write-noise measures it).")
    if noise.expired():
        return (f"The between-run noise term for {machine} (measured {noise.measured}) is older than "
                f"{EXPIRES_DAYS} days and is not applied: measure it again (benchmarks/coverage.py --write-noise).")
    return (f"Between-run noise on {machine}: {noise.sd_pct:.1f}% (sd of a run's log ratio beyond its repeats), "
            f"added to every interval here, and between-repeat noise of a paired ratio {100 * noise.rep_var ** 0.5:.1f}%, "
            f"the least a paired interval assumes; measured {noise.measured} from {noise.runs} runs of {noise.how} "
            f"(benchmarks/coverage.py).")


def usable(noise: HostNoise | None) -> HostNoise | None:
    return None if noise is None or noise.expired() else noise
