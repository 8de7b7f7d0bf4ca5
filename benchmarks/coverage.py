"""Do the report's 95% intervals cover the next run? Run one sweep N times and compare the reports.

    python benchmarks/coverage.py --runs 8                        # the README's sweep, the default
    python benchmarks/coverage.py --runs 8 -- repeats=1           # the same with extra overrides
    python benchmarks/coverage.py --from DIR                      # re-judge runs already on disk
    python benchmarks/coverage.py --from DIR --write-noise        # file the machine's between-run term

--write-noise estimates, from these runs judged without any filed term, the variance of a run's
log ratio beyond its own repeats (tau2) and the variance between repeats within a run, and files
them as results/reference/noise/<machine>.json (bench/report/noise.py), which every later report
on that machine adds to its intervals. Validate a term on runs it was not estimated from:
estimate it on one batch of runs (--write-noise), then judge another (--from OTHER).

Each run is `python -m bench.run <sweep>` into DIR/run_<i>; the ratios, intervals and verdicts are
the report's own (bench.report.explain.aggregate). Per configuration it prints every run's ratio
and interval, then two coverages:
- another run: how often run i's interval holds run j's ratio (i != j). Ideal 95% intervals give
  about 83% here, since both estimates are noisy (the difference of two has sqrt(2) their spread);
- the median: how often run i's interval holds the median ratio over all runs (ideal: 95%);
and the verdicts: a flip is one run calling a configuration slower and another faster. Full fine-
tuning's own step time per run shows the host's drift between runs. The last line is the summary.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
README_SWEEP = ["-m", "strategy=full,lora_all,lora_qk,lora_last", "lora.rank=2,8,32"]


def judge(run: Path, host_noise: bool = True) -> tuple[dict[str, dict], dict]:
    """label -> {ratio, lo, hi, verdict, repeats, se, df, rep_var} of one run's (single) setting, and
    full's figures. host_noise=False: without the machine's filed between-run term."""
    from bench.report.explain import aggregate, setting_machine, settings
    from bench.report.load import load_records

    df = load_records([run])
    out, full = {}, {"machine": setting_machine(df[df.status == "ok"])}
    for _, group in settings(df):
        agg = aggregate(group, host_noise=host_noise)
        for _, r in agg.iterrows():
            if r.strategy == "full":
                full.update(step_ms=float(r.step_ms), lo=float(r.spread_lo), hi=float(r.spread_hi))
            if "vs_full" not in agg or r.vs_full != r.vs_full or r.strategy == "full":
                continue
            out[r.label] = {"ratio": float(r.vs_full), "lo": float(r.vs_full_lo), "hi": float(r.vs_full_hi),
                            "verdict": r.verdict, "repeats": int(r.repeats), "se": float(r.vs_full_se),
                            "df": int(r.vs_full_df), "rep_var": float(r.rep_var)}
    full["unstable_jobs"] = int(((df.status == "ok") & (df.unstable == True)).sum())  # noqa: E712
    return out, full


def between_run_noise(runs: list[dict[str, dict]]) -> tuple[float, float, int]:
    """(tau2, rep_var, df): the variance of a run's log ratio beyond its own standard error, pooled
    over configurations (negative estimates count as zero), and the runs' mean between-repeat
    variance with its degrees of freedom. `runs` judged without any filed term."""
    excess = []
    for label in sorted({k for r in runs for k in r}):
        xs = [r[label] for r in runs if label in r and r[label]["se"] == r[label]["se"]]
        if len(xs) < 3:
            continue
        logs = np.log([x["ratio"] for x in xs])
        excess.append(logs.var(ddof=1) - float(np.mean([x["se"] ** 2 for x in xs])))
    reps = [(x["rep_var"], x["df"]) for r in runs for x in list(r.values())[:1] if x["rep_var"] == x["rep_var"]]
    df = sum(d for _, d in reps)
    rep_var = sum(v * d for v, d in reps) / df if df else float("nan")
    return max(0.0, float(np.mean(excess))) if excess else float("nan"), rep_var, df


def coverage(runs: list[dict[str, dict]]) -> dict:
    labels = sorted({k for r in runs for k in r if k != "full"})
    per, pairs, hits, med_pairs, med_hits, flips, disagree = {}, 0, 0, 0, 0, [], []
    for label in labels:
        rs = [r[label] for r in runs if label in r]
        ratios = np.array([x["ratio"] for x in rs])
        median = float(np.median(ratios))
        other = sum(x["lo"] <= y["ratio"] <= x["hi"] for i, x in enumerate(rs) for j, y in enumerate(rs) if i != j)
        n_other = len(rs) * (len(rs) - 1)
        med = sum(x["lo"] <= median <= x["hi"] for x in rs)
        verdicts = [x["verdict"] for x in rs]
        per[label] = {"median": median, "other": other, "n_other": n_other, "median_hits": med, "n": len(rs),
                      "verdicts": verdicts}
        pairs, hits, med_pairs, med_hits = pairs + n_other, hits + other, med_pairs + len(rs), med_hits + med
        if "slower" in verdicts and "faster" in verdicts:
            flips.append(label)
        elif len(set(verdicts)) > 1:
            disagree.append(label)
    return {"per": per, "pairs": pairs, "hits": hits, "median_pairs": med_pairs, "median_hits": med_hits,
            "flips": flips, "disagree": disagree}


def render(runs: list[dict], fulls: list[dict], cov: dict, how: str) -> str:
    short = {"slower": "slower", "faster": "faster", "same": "same"}
    lines = [f"# Coverage of the report's 95% intervals: {len(runs)} runs of {how}", "",
             "| configuration | median ratio | ratio [95% interval] verdict, run 1..N | holds another run's "
             "ratio | holds the median | verdicts |", "|---|---|---|---|---|---|"]
    for label, p in cov["per"].items():
        cells = "; ".join(f"{r[label]['ratio']:.2f} [{r[label]['lo']:.2f},{r[label]['hi']:.2f}] "
                          f"{short[r[label]['verdict']]}" for r in runs if label in r)
        kinds = sorted(set(p["verdicts"]))
        lines.append(f"| {label} | {p['median']:.2f} | {cells} | {p['other']}/{p['n_other']} | "
                     f"{p['median_hits']}/{p['n']} | {'/'.join(kinds)} |")
    steps = [f["step_ms"] for f in fulls if "step_ms" in f]
    reps = sorted({r[k]["repeats"] for r in runs for k in r})
    lines += ["", "Full fine-tuning per run, step ms (median over its repeats): "
                  + ", ".join(f"{s:.2f}" for s in steps)
              + (f"; between runs {min(steps):.2f}-{max(steps):.2f} ({(max(steps) / min(steps) - 1) * 100:.0f}%)"
                 if steps else ""),
              f"Repeats per configuration per run: {', '.join(map(str, reps))}. Jobs flagged unstable, per run: "
              + ", ".join(str(f.get("unstable_jobs", 0)) for f in fulls) + ".", ""]
    other = cov["hits"] / cov["pairs"] if cov["pairs"] else float("nan")
    med = cov["median_hits"] / cov["median_pairs"] if cov["median_pairs"] else float("nan")
    lines.append(f"Summary: another run's ratio inside a run's 95% interval {cov['hits']}/{cov['pairs']} "
                 f"({other:.0%}; ideal about 83%); the median over runs inside it {cov['median_hits']}/"
                 f"{cov['median_pairs']} ({med:.0%}; ideal 95%); verdict flips (slower in one run, faster in "
                 f"another): {len(cov['flips'])}{' (' + ', '.join(cov['flips']) + ')' if cov['flips'] else ''}; "
                 f"verdict and no-difference disagreements: {len(cov['disagree'])}"
                 f"{' (' + ', '.join(cov['disagree']) + ')' if cov['disagree'] else ''}")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--out", type=Path, default=None, help="default results/coverage/<time>")
    ap.add_argument("--from", dest="from_dir", type=Path, default=None, help="judge the run_* folders in DIR")
    ap.add_argument("--write-noise", action="store_true", help="file the machine's between-run term from these runs")
    ap.add_argument("overrides", nargs="*", help="after --: overrides added to the README's sweep")
    a = ap.parse_args(argv)
    sweep = README_SWEEP + a.overrides
    how = f"`python -m bench.run {' '.join(sweep)}`"
    if a.from_dir is not None:
        out = a.from_dir
        meta = json.loads((out / "coverage.json").read_text()) if (out / "coverage.json").exists() else {}
        how = meta.get("how", how)
    else:
        if a.runs < 2:
            sys.exit("error: --runs must be at least 2 (coverage compares runs)")
        out = a.out or ROOT / "results" / "coverage" / time.strftime("%Y-%m-%d_%H-%M-%S")
        out.mkdir(parents=True, exist_ok=True)
        walls = []
        for i in range(a.runs):
            t0 = time.perf_counter()
            rc = subprocess.call([sys.executable, "-m", "bench.run", *sweep, "train.progress=false",
                                  f"hydra.sweep.dir={out / f'run_{i}'}"], cwd=ROOT, stdout=subprocess.DEVNULL)
            walls.append(time.perf_counter() - t0)
            print(f"run {i + 1}/{a.runs}: exit {rc}, {walls[-1]:.0f} s", file=sys.stderr, flush=True)
            if rc not in (0,):
                sys.exit(f"error: run {i} exited {rc}; its records are in {out / f'run_{i}'}")
        how += f", {min(walls):.0f}-{max(walls):.0f} s a run"
        (out / "coverage.json").write_text(json.dumps({"how": how, "walls": walls}))
    dirs = sorted(out.glob("run_*"), key=lambda p: int(p.name.split("_")[1]))
    if a.write_noise:
        from bench.report import noise

        bare = [judge(d, host_noise=False) for d in dirs]
        tau2, rep_var, df = between_run_noise([b[0] for b in bare])
        machine = bare[0][1]["machine"]
        measured = time.strftime("%Y-%m-%d", time.localtime(min(d.stat().st_mtime for d in dirs)))
        path = noise.write(noise.HostNoise(machine=machine, tau2=tau2, rep_var=rep_var, df=df, runs=len(dirs),
                                           measured=measured, how="the README sweep"))
        print(f"filed {path}: between-run sd {100 * tau2 ** 0.5:.2f}% of the ratio, between-repeat sd "
              f"{100 * rep_var ** 0.5:.2f}% ({df} degrees of freedom), from {len(dirs)} runs", file=sys.stderr)
        return 0
    judged = [judge(d) for d in dirs]
    runs, fulls = [j[0] for j in judged], [j[1] for j in judged]
    text = render(runs, fulls, coverage(runs), how)
    (out / "coverage.txt").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
