"""Hydra glue: the command-line checks before Hydra runs anything, and the report after a sweep.

Hydra reports an unknown group option or key in several lines; a user who typed
`strategy=lora_alll` deserves one line that names the key, the value and the choices.
Values of known keys (rank 0, an unknown precision) are the job's to refuse: it records
them as `invalid`, so a sweep keeps its other cells.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def compose_config(overrides: list[str]):
    """The validated BenchConfig for these overrides, composed as a job would be (for scripts
    that build jobs in their own process, such as the interleaved benchmarks)."""
    from hydra import compose, initialize_config_dir

    from bench.config import load_config

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return load_config(compose("config", overrides=list(overrides)))


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def preflight(argv: list[str]) -> None:
    """Exit(2) with one line if an override names an unknown group option or key."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    args = [a for a in argv if "=" in a and not a.startswith("-")]
    parser = OverridesParser.create()
    overrides = []
    for arg in args:  # one at a time, so the message can name the one that is wrong
        try:
            overrides += parser.parse_overrides([arg])
        except HydraException as e:
            _fail(f"{arg}: {str(e).splitlines()[0]} (see Hydra's override grammar)")

    groups = {p.name for p in CONF_DIR.iterdir() if p.is_dir()}
    first_values, hydra_lines = [], []
    for o in overrides:
        key = o.key_or_group
        if key.startswith("hydra"):
            hydra_lines.append(o.input_line)  # for the output directory's check below
            continue
        if o.is_sweep_override():
            try:
                values = list(o.sweep_string_iterator())
            except Exception:  # range()/glob() sweeps: leave them to Hydra
                continue
        else:
            values = [o.get_value_element_as_str()]
        if key == "study" and not (o.is_add() or o.is_force_add()):
            _fail(f"{o.input_line}: a study is added to the configuration, not chosen: write +study="
                  f"{values[0] if values else '<name>'} (python -m bench.studies lists them)")
        if key in groups and not o.is_delete():
            allowed = group_options(key)
            for v in values:
                if v not in allowed:
                    _fail(f"{key}={v!r} is not a known {key}; choose from: {', '.join(allowed)}")
        first_values.append(f"{o.get_key_element()}={values[0]}" if values else o.input_line)

    # Unknown keys: compose once with each sweep at its first value, as the first job would.
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=[*first_values, *hydra_lines], return_hydra_config=True)
    except Exception as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        _fail(" ".join(lines[:2]) if lines else type(e).__name__)
    multirun = any(a in ("-m", "--multirun") for a in argv) or cfg.hydra.mode == "MULTIRUN"
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    problem = unwritable(Path(str(cfg.hydra.sweep.dir if multirun else cfg.hydra.run.dir)))
    if problem:
        _fail(f"{key}: {problem}")


def unwritable(path: Path) -> str | None:
    """Why an output directory cannot be made and written (None: it can), found before any job runs:
    a trial folder is made and removed in the deepest part of the path that exists."""
    import tempfile

    path = path.absolute()
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    if not existing.is_dir():
        return f"{path} cannot be made: {existing} is not a directory"
    try:
        Path(tempfile.mkdtemp(prefix=".lora-bench-check-", dir=existing)).rmdir()
    except OSError as e:
        return f"{path} cannot be made or written ({e.strerror or e} in {existing})"
    return None


REPORT_FAILED: list[Path] = []  # sweeps whose report failed in this process: the sweep exits 1
# Statuses of a sweep whose jobs ran in other processes (Hydra's submitit launchers): read from
# their records when the sweep ends, for the exit code.
SWEPT_ELSEWHERE: list[str] = []


def report_sweep(sweep_dir: Path) -> bool:
    """Build a sweep's report from its records on disk (Hydra hands the callback no results).
    A report that fails is one line on stderr and a non-zero exit; the records stay on disk."""
    from bench import signals
    from bench.report import build_report

    signals.point("report")
    try:
        print(f"report: {build_report([sweep_dir], sweep_dir / 'report')}", flush=True)
        if signals.requested():  # the flag waited for the report: say why the sweep exits 130 now
            print("interrupted while the report was written: it was finished first, with every record measured; "
                  "the sweep stopped", file=sys.stderr, flush=True)
        return True
    except Exception as e:  # the records are safe on disk; `python -m bench.report` can retry
        print(f"error: the report of {sweep_dir} failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
              f"rebuild it with python -m bench.report {sweep_dir}", file=sys.stderr)
        REPORT_FAILED.append(sweep_dir)
        return False


def record_statuses(sweep_dir: Path) -> list[str]:
    """The status of every job record directly under a sweep (an unreadable one counts as error)."""
    from bench.record.store import METRICS, read_record

    out = []
    for path in sorted(Path(sweep_dir).glob(f"*/{METRICS}")):
        try:
            out.append(read_record(path).status)
        except Exception:
            out.append("error")
    return out


class ReportOnMultirunEnd(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        if config.hydra.launcher._target_.split(".")[-1] != "BasicLauncher":
            SWEPT_ELSEWHERE.extend(record_statuses(sweep))
        report_sweep(sweep)
