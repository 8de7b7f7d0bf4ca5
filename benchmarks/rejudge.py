"""Re-judge the filed references under the calibrated intervals: which verdicts change.

    python benchmarks/rejudge.py            # writes results/reference/rejudged.md

Every filed report under results/reference/<study>/<machine>/report/ was built by the code of its
day; its records stay as they were measured. This reads each reference's records with today's
report code (bench.report.explain.aggregate: calibrated intervals, the machine's filed between-run
term where there is one) and sets each configuration's verdict beside the one its filed report
printed. Nothing is measured again and no filed report is edited.
"""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
REF = ROOT / "results" / "reference"
WORDS = {"slower": "slower", "faster": "faster", "same": "no difference", "unjudged": "not judged (1 repeat)",
         "disturbed": "left out (disturbed)", "": ""}


def _plain(title: str) -> str:
    """Setting titles from before the step's mode was named (eager) match today's."""
    return title.replace(", eager,", ",").replace(", eager", "")


def filed_verdicts(report: Path) -> dict[tuple[str, str], str]:
    """(setting title, configuration) -> the verdict column of the filed report's time tables."""
    out, setting, cols = {}, None, None
    for line in report.read_text().splitlines():
        if line.startswith("## Setting"):
            setting, cols = _plain(line.split(": ", 1)[1]), None
        elif line.startswith("| configuration |"):
            cols = [c.strip() for c in line.strip("|").split("|")]
        elif cols and "verdict" in cols and line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if len(cells) == len(cols):
                out[(setting, cells[0])] = cells[cols.index("verdict")]
        elif not line.startswith("|"):
            cols = cols if line == "" else None
    return out


def main() -> int:
    from bench.report.explain import aggregate, settings
    from bench.report.load import load_records
    from bench.report.report import _setting_title

    lines = ["# The references re-judged under the calibrated intervals", "",
             "Written by `python benchmarks/rejudge.py`. Each filed reference's records read with today's report "
             "code (paired baselines where the records have them; otherwise job against job with the between-repeat "
             "variance pooled over the setting; one repeat is not judged; the machine's filed between-run term "
             "added), beside the verdict its filed report printed. Only the configurations whose verdict changed "
             "are listed; the counts cover all.", ""]
    for records in sorted(REF.glob("*/*/records")):
        report = records.parent / "report" / "report.md"
        old = filed_verdicts(report) if report.exists() else {}
        df = load_records([records])
        changed, counts = [], Counter()
        for setting, g in settings(df):
            agg = aggregate(g)
            title = _setting_title(setting)
            for _, r in agg[agg.strategy != "full"].iterrows() if "verdict" in agg else []:
                new = WORDS.get(r.verdict, r.verdict)
                before = old.get((_plain(title), r.label), "")
                counts[(before or "-", new)] += 1
                if before != new:
                    changed.append(f"| {title.split(', on ')[0]} | {r.label} | {r.vs_full:.2f}x | "
                                   f"{r.vs_full_lo:.2f}-{r.vs_full_hi:.2f} | {r.repeats} {r.compared} | "
                                   f"{before or '(not in the filed tables)'} | {new} |")
        study, machine = records.parts[-3], records.parts[-2]
        summary = "; ".join(f"{n} {a} -> {b}" if a != b else f"{n} {b} (unchanged)"
                            for (a, b), n in sorted(counts.items()))
        lines += [f"## {study} on {machine}", "", f"Verdicts of LoRA configurations: {summary or 'none'}.", ""]
        if changed:
            lines += ["| setting | configuration | vs full | 95% interval | repeats | filed verdict | re-judged |",
                      "|---|---|---|---|---|---|---|", *changed, ""]
    out = REF / "rejudged.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
