"""`python -m bench.run [-m] key=value ...`: one job, or a sweep of jobs, each measured and recorded.

`bench.job.run_job` is the plain function (tests call it with a composed config); `main` is
Hydra's thin wrapper around it, with the sweep's bookkeeping (resume, duplicates, exit codes); `cli` checks the command line first, so a typo costs one line, not a trace.
Every job writes metrics.json whatever happens: a refused configuration, a divergence or a
crash is a record with a status, and a sweep goes on to its next job.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from bench import signals

# Run as the program: the flag goes in before the heavy imports below (torch, Hydra), or a Ctrl-C
# while they load raises KeyboardInterrupt wherever the interpreter is, a finaliser included,
# where it is ignored and the sweep runs on. (Imported by a test, the handlers stay as they are.)
if __name__ == "__main__":
    signals.install()

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from bench.cli import REPORT_FAILED, SWEPT_ELSEWHERE, preflight, report_sweep
from bench.record.claim import CLAIM, claim, release
from bench.record.schema import Outcome, Record, RecordError
from bench.record.store import METRICS, STEPS, read_record, write_record

# bench.job (torch, the models) is imported where a job runs, not here: a mistyped key is refused
# by cli()'s preflight in about a second, before torch loads.

# (status, multirun?) of each job this process ran; Hydra's multirun returns nothing to the caller.
FINISHED: list[tuple[str, bool]] = []
SWEEP_DIRS: list[Path] = []  # where this process's sweep writes, for a report after an interrupt
_REFUSED: set[str] = set()  # reasons of refused jobs already printed: each repeat of a bad cell says it once
# Outcomes that are results, not failures; `claimed`: another sweep was measuring the job (skipped here).
FINDINGS = {"ok", "oom", "diverged", "invalid", "duplicate", "claimed"}


def _is_complete(path: Path, key: str) -> bool:
    try:
        rec = read_record(path)
    except RecordError:
        return False
    return rec.status == "ok" and rec.identity.config_key == key


# Per sweep directory: configuration key -> the first ok metrics.json of it. Read from disk once (a
# resumed sweep), then kept up to date by this process's jobs: scanning every record before every
# job was quadratic in the sweep's size.
_COMPLETE: dict[Path, dict[str, Path]] = {}


def find_complete(sweep_dir: Path, key: str) -> Path | None:
    """A metrics.json under sweep_dir with status ok for configuration `key`, if any."""
    sweep_dir = Path(sweep_dir)
    if sweep_dir not in _COMPLETE:
        index: dict[str, Path] = {}
        for p in sorted(sweep_dir.rglob(METRICS)):
            try:
                rec = read_record(p)
            except RecordError:
                continue
            if rec.status == "ok":
                index.setdefault(rec.identity.config_key, p)
        _COMPLETE[sweep_dir] = index
    found = _COMPLETE[sweep_dir].get(key)
    return found if found is not None and _is_complete(found, key) else None


def _remember(sweep_dir: Path, rec: Record, path: Path) -> None:
    if rec.status == "ok" and sweep_dir in _COMPLETE:
        _COMPLETE[sweep_dir].setdefault(rec.identity.config_key, path)


def _own_process(hc) -> bool:
    """Whether this job runs in a process of its own (Hydra's submitit launchers), not the sweep's."""
    return not str(hc.launcher.get("_target_", "")).endswith("BasicLauncher")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    out_dir = Path(hc.runtime.output_dir)
    signals.point("job_start")
    if multirun and Path(hc.sweep.dir) not in SWEEP_DIRS:  # first: an interrupt below still reports the sweep
        SWEEP_DIRS.append(Path(hc.sweep.dir))
    held = claim(out_dir)
    if held is not None:  # another sweep into the same directory is measuring this job now
        print(f"[skip] {' '.join(hc.overrides.task)}: {out_dir} is being measured by another process "
              f"({held.describe()}); nothing here was touched. Run the sweep again when it ends to measure "
              f"what is still missing (if that process is gone from its host, delete {out_dir / CLAIM})",
              file=sys.stderr, flush=True)
        FINISHED.append(("claimed", multirun))
        return
    try:
        _job(cfg, hc, multirun, out_dir)
    finally:
        release(out_dir)
    signals.point("job_end")
    signals.check()


def _job(cfg: DictConfig, hc, multirun: bool, out_dir: Path) -> None:
    """One job in a directory this process has claimed."""
    from bench.job import identity, summary_line, to_node
    if signals.requested():  # a signal between jobs stops the sweep here, with this job's record
        node = to_node(cfg)
        write_record(out_dir / METRICS, Record(status="interrupted", identity=identity(node, list(hc.overrides.task)),
                                               config=node, outcome=Outcome(reason="interrupted before it started")))
        FINISHED.append(("interrupted", multirun))
        signals.check()
    node = to_node(cfg)
    ident = identity(node)
    own = out_dir / METRICS
    if multirun and cfg.resume is True:
        done = own if _is_complete(own, ident.config_key) else find_complete(Path(hc.sweep.dir), ident.config_key)
        if done is not None:
            if done != own:  # the same measurement under another job: say so in this job's place
                write_record(own, Record(status="duplicate", identity=ident, config=node,
                                         outcome=Outcome(same_as=str(done.parent))))
            print(f"[skip] {' '.join(hc.overrides.task)}: already measured in {done.parent}", flush=True)
            FINISHED.append(("ok", True))
            return
    other = _other_configuration(own, ident.config_key)
    if other is not None:  # another sweep's job in this place: its measurement is not ours to move
        print(f"[refused] {' '.join(hc.overrides.task)}: {out_dir} holds a measurement of another configuration "
              f"({other}); nothing was overwritten. Give this sweep its own hydra.sweep.dir.", file=sys.stderr,
              flush=True)
        FINISHED.append(("invalid", multirun))
        return
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name, aside in ((METRICS, f"metrics.replaced-{stamp}.json"), (STEPS, f"steps.replaced-{stamp}.jsonl")):
        if (out_dir / name).exists():  # an earlier attempt's record and steps in this job's place: keep them
            (out_dir / name).rename(out_dir / aside)
    try:
        rec = _measure(cfg, out_dir, list(hc.overrides.task))
    except KeyboardInterrupt:
        if _own_process(hc):  # a submitit job: its record says interrupted; the sweep's process decides
            FINISHED.append(("interrupted", multirun))
            return
        raise
    line = summary_line(rec)
    if rec.status != "invalid" or line.split(": ", 1)[-1] not in _REFUSED:  # one refusal's reason once a sweep
        print(line, file=sys.stdout if rec.status == "ok" else sys.stderr, flush=True)
    if rec.status == "invalid":
        _REFUSED.add(line.split(": ", 1)[-1])
    if multirun:
        _remember(Path(hc.sweep.dir), rec, out_dir / METRICS)
    FINISHED.append((rec.status, multirun))


def _other_configuration(path: Path, key: str) -> str | None:
    """What an ok record at `path` measured, where that is not configuration `key` (None otherwise)."""
    try:
        rec = read_record(path)
    except RecordError:
        return None
    if rec.status != "ok" or rec.identity.config_key == key:
        return None
    i = rec.identity
    return " ".join(x for x in (i.strategy, f"r={i.rank}" if i.rank else None, f"on {i.model}" if i.model else None,
                                " ".join(i.overrides or [])) if x)


def _measure(cfg: DictConfig, out_dir: Path, overrides: list[str]) -> Record:
    """The job, measured again (up to `remeasure` times) while its machine was busy: each disturbed
    attempt's record and steps are kept beside it as metrics.disturbed-<n>.json, and the record that
    stands says what was set aside (stability.remeasured). Not again while the neighbour that
    disturbed it is still running: that attempt would be disturbed too, at the cost of a whole job."""
    from bench.job import run_job, summary_line
    from bench.measure.stability import neighbour_still_busy

    reasons = []
    while True:
        rec = run_job(cfg, out_dir, overrides=overrides)
        st = rec.stability
        if rec.status != "ok" or st is None or not st.unstable or len(reasons) >= cfg.remeasure or signals.requested():
            break
        busy = neighbour_still_busy()
        if busy:  # a second attempt now would be disturbed too: keep the first, flagged
            print(f"[not again] {summary_line(rec).split(':')[0][5:]}: {st.reason}; not measured again: {busy} "
                  f"(the record stays flagged, out of every verdict)", file=sys.stderr, flush=True)
            break
        reasons.append(st.reason)
        for name, aside in ((METRICS, f"metrics.disturbed-{len(reasons)}.json"),
                            (STEPS, f"steps.disturbed-{len(reasons)}.jsonl")):
            if (out_dir / name).exists():
                (out_dir / name).rename(out_dir / aside)
        print(f"[again] {summary_line(rec).split(':')[0][5:]}: {st.reason}; measuring it again "
              f"({len(reasons)} of remeasure={cfg.remeasure})", file=sys.stderr, flush=True)
    if reasons and rec.stability is not None:
        rec.stability.remeasured = reasons
        write_record(out_dir / METRICS, rec)
    return rec


def exit_code(finished: list[tuple[str, bool]], report_ok: bool = True, stopped: bool = False) -> int:
    """One rule for single runs and sweeps (README, "Exit codes"):
    130 interrupted; 1 a job ended `error` or the report failed; 2 every job was `invalid`
    (nothing measured: bad input); 0 otherwise (ok, oom, diverged, duplicate are findings)."""
    statuses = [s for s, _ in finished]
    if stopped or "interrupted" in statuses:
        return 130
    if not statuses or any(s not in FINDINGS for s in statuses) or not report_ok:
        return 1
    if all(s == "invalid" for s in statuses):
        return 2
    return 0


def expand_repeats(argv: list[str]) -> list[str]:
    """`repeats=N` -> `repeat=0,...,N-1` as the first override: the outermost loop of the sweep,
    so every repetition is a full pass over the grid and drift hits all configurations alike."""
    found = [a for a in argv if a.startswith("repeats=")]
    if not found:
        return argv
    value = found[-1].split("=", 1)[1]
    if not value.isdigit() or int(value) < 1:
        print(f"error: repeats={value!r} must be a whole number >= 1", file=sys.stderr)
        sys.exit(2)
    rest = [a for a in argv if not a.startswith("repeats=")]
    # Before the first key=value override (flags and their values, like `--cfg job`, stay put).
    at = next((i for i, a in enumerate(rest) if "=" in a and not a.startswith("-")), len(rest))
    rest.insert(at, f"repeat={','.join(map(str, range(int(value))))}")
    if int(value) > 1 and not any(a in ("-m", "--multirun") for a in rest):
        rest.insert(0, "-m")
    return rest


def _skip_batch_validation() -> None:
    """Hydra's sweeper composes every job's configuration to validate a batch, and again to launch
    each job: 0.08 s a job on this project's CPU, 3 s of the README sweep's 33. preflight() has
    checked every key and option (composing the first job), so the first pass goes; a combination
    that still does not compose fails when its job starts, with the records before it on disk."""
    from hydra.plugins.sweeper import Sweeper

    Sweeper.validate_batch_is_legal = lambda self, batch: None


def cli() -> None:
    signals.install()  # first: a Ctrl-C during the checks below is a flag too
    if "project.gpu=list" in sys.argv[1:]:  # the devices a projection knows, and where their figures come from
        from bench.project.devices import listing

        print(listing())
        sys.exit(0)
    if "project.link=list" in sys.argv[1:]:  # the links, each with its bus bandwidth's source
        from bench.project.links import listing as links

        print(links())
        sys.exit(0)
    sys.argv[1:] = expand_repeats(sys.argv[1:])
    preflight(sys.argv[1:])
    _skip_batch_validation()
    signals.point("preflight")
    try:
        signals.check()
        main()
    except KeyboardInterrupt:
        print(_interrupted_message(), file=sys.stderr)
        if SWEEP_DIRS:  # Hydra skips on_multirun_end after an interrupt: report what was measured
            report_sweep(SWEEP_DIRS[-1])
        signals.final()
        sys.exit(130)
    finished = FINISHED or [(status, True) for status in SWEPT_ELSEWHERE]  # jobs in other processes
    code = exit_code(finished, report_ok=not REPORT_FAILED, stopped=signals.final())
    signals.point("exit")
    sys.exit(code)


def _interrupted_message() -> str:
    if not (SWEEP_DIRS or FINISHED):
        return "interrupted before any job started"
    if not SWEEP_DIRS:
        return "interrupted: the job's record was written"
    sweep = SWEEP_DIRS[-1]
    args = [a for a in sys.argv[1:] if not a.startswith("hydra.sweep.dir=")]
    return (f"interrupted: the record of the running job was written; the sweep stopped. Resume it (jobs already "
            f"measured are skipped): python -m bench.run {' '.join(args)} hydra.sweep.dir={sweep}")


if __name__ == "__main__":
    cli()
