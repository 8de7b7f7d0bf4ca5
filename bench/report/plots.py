"""The report's plots, each saved as PNG and SVG. One colour per strategy in every plot
(Okabe-Ito, safe for colour-blind readers); full fine-tuning is always black."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
# The same records give byte-identical SVGs: no random ids, no date (a rebuilt reference shows no diff).
matplotlib.rcParams["svg.hashsalt"] = "lora-bench"
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench.record.store import METRICS, STEPS, read_record, read_steps  # noqa: E402
from bench.report.load import strategy_label  # noqa: E402

# Okabe-Ito; the most distinct colours go to the strategies most often compared. A strategy not
# listed gets grey (tests/test_architecture.py checks that every strategy of the table is here).
COLOURS = {"full": "#000000", "lora_all": "#E69F00", "lora_qk": "#56B4E9", "lora_last": "#009E73",
           "head_only": "#999999", "lora_qv": "#0072B2", "lora_attn": "#D55E00", "lora_ffn": "#CC79A7",
           "lora_square": "#8C7A00", "freeze": "#7F3C8D"}
MIB = 2 ** 20


def colour(strategy: str) -> str:
    return COLOURS.get(strategy, "#666666")


def _save(fig, out: Path, name: str) -> list[Path]:
    fig.tight_layout()
    paths = [out / f"{name}.png", out / f"{name}.svg"]
    fig.savefig(paths[0], dpi=120)
    fig.savefig(paths[1], metadata={"Date": None})
    plt.close(fig)
    return paths


def step_time_vs_rank(agg: pd.DataFrame, title: str, out: Path, name: str) -> list[Path]:
    """Step time against rank, one line per LoRA strategy; non-LoRA strategies as horizontal lines."""
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    lora = agg[agg["rank"].notna()]
    for strategy, g in lora.groupby("strategy", sort=False):
        g = g.sort_values("rank")
        err = [g.step_ms - g.spread_lo, g.spread_hi - g.step_ms]
        ax.errorbar(g["rank"], g.step_ms, yerr=err, marker="o", capsize=3, color=colour(strategy), label=strategy)
    for _, r in agg[agg["rank"].isna()].iterrows():
        ax.axhline(r.step_ms, color=colour(r.strategy), ls="-" if r.strategy == "full" else "--", lw=1.5,
                   label=f"{r.label} (no rank)")
        ax.axhspan(r.spread_lo, r.spread_hi, color=colour(r.strategy), alpha=0.08)
    if lora["rank"].nunique() > 1:
        ax.set_xscale("log", base=2)
    if not lora.empty:
        ax.set_xticks(sorted(lora["rank"].unique()), [str(int(r)) for r in sorted(lora["rank"].unique())])
    wide = agg.spread_hi.max() / max(agg.spread_lo.min(), 1e-9) > 10
    if wide:  # a linear axis would flatten the fast configurations against zero
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0)
    ax.set_xlabel("LoRA rank")
    kinds = "; ".join(sorted(set(agg.spread_kind)))
    ax.set_ylabel(f"median step time (ms{', log scale' if wide else ''})\nbars and bands: {kinds}", fontsize=8)
    ax.set_title(f"Step time; above the black line is slower than full fine-tuning\n{title}", fontsize=9)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    return _save(fig, out, name)


def _stacked(agg: pd.DataFrame, columns: list[tuple[str, str, str]], scale: float, ylabel: str,
             title: str, out: Path, name: str) -> list[Path]:
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(agg) + 2), 4.4))
    x = np.arange(len(agg))
    bottom = np.zeros(len(agg))
    for col, label, shade in columns:
        vals = agg[col].fillna(0).to_numpy(dtype=float) / scale
        ax.bar(x, vals, bottom=bottom, color=shade, edgecolor=[colour(s) for s in agg.strategy], linewidth=1.5,
               label=label)
        bottom += vals
    ax.set_xticks(x, agg.label, rotation=30, ha="right", fontsize=8)
    for tick, s in zip(ax.get_xticklabels(), agg.strategy):
        tick.set_color(colour(s))
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out, name)


def time_split(agg, title, out, name):
    """Phase means, and what the phases do not cover ("other": the step's mean less their sum), so
    each bar adds up to the mean step. Medians would not: the median step is not the sum of the
    phases' medians."""
    phases = agg[["forward_mean_ms", "backward_mean_ms", "optimizer_mean_ms"]].fillna(0).sum(axis=1)
    agg = agg.assign(other_mean_ms=(agg.step_mean_ms - phases).clip(lower=0))
    cols = [("forward_mean_ms", "forward", "#9ecae1"), ("backward_mean_ms", "backward", "#4292c6"),
            ("optimizer_mean_ms", "optimizer", "#fdae6b"), ("other_mean_ms", "other (outside the phases)", "#d9d9d9")]
    return _stacked(agg, cols, 1.0, "mean ms per step (the bars add up to the mean step)",
                    f"Where the time goes\n{title}", out, name)


def memory_split(agg, title, out, name):
    cols = [("weights_bytes", "weights", "#d9d9d9"), ("grads_bytes", "gradients", "#fdae6b"),
            ("optimizer_state_bytes", "optimizer state", "#e6550d"),
            ("activations_bytes", "saved activations", "#6baed6")]
    peak = agg.memory_split_bytes.max() if len(agg) else 0
    scale, unit = (2 ** 30, "GiB") if peak > 4 * 2 ** 30 else (MIB, "MiB")
    return _stacked(agg, cols, scale, f"memory ({unit})", f"Where the memory goes\n{title}", out, name)


def shade(hex_colour: str, i: int, n: int) -> tuple:
    """Variant i of n of one strategy: its colour from darker to lighter, so the family stays."""
    rgb = np.array(matplotlib.colors.to_rgb(hex_colour))
    if n <= 1:
        return tuple(rgb)
    t = i / (n - 1)  # 0: darker, 1: lighter
    dark, light = rgb * 0.55, rgb + (1 - rgb) * 0.55
    return tuple(dark * (1 - t) + light * t)


def _curve(path: str) -> tuple[list[float], list[float], str]:
    """Eval loss over training time where the job evaluated during training, else training loss."""
    curve = read_record(Path(path) / METRICS).eval_curve
    if len(curve) > 2:
        return [c.elapsed_s for c in curve], [c.eval_loss for c in curve], "eval"
    rows = [s for s in read_steps(Path(path) / STEPS) if s.get("elapsed_s") is not None]
    return [s["elapsed_s"] for s in rows], [s["loss"] for s in rows], "training"


def loss_vs_time(agg: pd.DataFrame, title: str, out: Path, name: str) -> list[Path]:
    """Loss against training wall-clock time (first repeat of each configuration)."""
    fig, ax = plt.subplots(figsize=(9, 4.4))
    styles = ["-", "--", ":", "-."]
    counts = agg.strategy.value_counts().to_dict()
    seen: dict[str, int] = {}
    kinds, floor = set(), None
    for _, r in agg.iterrows():
        x, y, kind = _curve(r.paths[0])
        if not x:
            continue
        kinds.add(kind)
        i = seen.get(r.strategy, 0)
        seen[r.strategy] = i + 1
        ax.plot(x, y, color=shade(colour(r.strategy), i, counts[r.strategy]), ls=styles[i % len(styles)],
                lw=1.6 if kind == "eval" else 1.0, marker="o" if kind == "eval" else None, ms=3, label=r.label)
        floor = r.loss_floor if r.loss_floor == r.loss_floor else floor
    if floor is not None:
        ax.axhline(floor, color="#777777", ls=":", lw=1, label="loss floor (entropy rate)")
    which = " and ".join(sorted(kinds)) or "training"
    ax.set_xlabel("training time (s, warm-up and timed steps)")
    ax.set_ylabel(f"{which} loss (nats/token)")
    ax.set_title(f"Loss against wall-clock time\n{title}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    return _save(fig, out, name)


def crossover(cells: pd.DataFrame, strategy: str, out: Path, name: str) -> list[Path]:
    """t_lora / t_full over model width x tokens per step, with the 1.0 contour.

    `cells`: columns dim, tokens_per_step, ratio (NaN where a side failed) and status text.
    """
    dims = sorted(cells.dim.unique())
    toks = sorted(cells.tokens_per_step.unique())
    grid = np.full((len(dims), len(toks)), np.nan)
    fig, ax = plt.subplots(figsize=(1.3 * len(toks) + 3, 0.8 * len(dims) + 2.5))
    for _, c in cells.iterrows():
        i, j = dims.index(c.dim), toks.index(c.tokens_per_step)
        grid[i, j] = c.ratio
    lim = max(1.5, np.nanmax(np.abs(np.log2(grid)))) if np.isfinite(grid).any() else 1.0
    im = ax.imshow(np.log2(grid), cmap="PuOr_r", vmin=-lim, vmax=lim, origin="lower", aspect="auto")
    for _, c in cells.iterrows():
        i, j = dims.index(c.dim), toks.index(c.tokens_per_step)
        text = f"{c.ratio:.2f}" if c.ratio == c.ratio else str(c.note)
        ax.text(j, i, text, ha="center", va="center", fontsize=8)
    finite = np.isfinite(grid)
    if len(dims) > 1 and len(toks) > 1 and finite.sum() >= 4 and (grid[finite] > 1).any() and (grid[finite] < 1).any():
        # Masked where a cell has no ratio (failed, unstable): the contour breaks there, not everywhere.
        ax.contour(np.ma.masked_invalid(np.log2(grid)), levels=[0.0], colors="black", linewidths=1.5)
    ax.set_xticks(range(len(toks)), [str(int(t)) for t in toks])
    ax.set_yticks(range(len(dims)), [str(int(d)) for d in dims])
    ax.set_xlabel("tokens per step")
    ax.set_ylabel("model width (dim)")
    cb = fig.colorbar(im, ax=ax)
    cb.set_label("log2(t_lora / t_full): above 0 LoRA is slower")
    ax.set_title(f"{strategy} against full fine-tuning; black line: equal time", fontsize=9)
    return _save(fig, out, name)


ATTRIBUTION_COLOURS = {"base_matmul": "#4292c6", "adapter_matmul": "#E69F00", "adapter_other": "#fdae6b",
                       "attention": "#9ecae1", "norm_activation_other": "#bdbdbd", "compiled": "#31a354", "communication": "#de2d26", "gradients": "#74c476",
                       "optimizer": "#e6550d", "framework": "#756bb1", "gpu_idle": "#d9d9d9"}


def attribution_deltas(deltas: pd.DataFrame, title: str, out: Path, name: str) -> list[Path]:
    """Per configuration, the profiled step's category differences from full fine-tuning (ms):
    bars right of 0 cost time, left of 0 save it; the black tick is the whole difference."""
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(deltas) + 1.8))
    y = np.arange(len(deltas))
    cats = [c for c in ATTRIBUTION_COLOURS if c in deltas.columns and c != "gpu_idle"]
    pos, neg = np.zeros(len(deltas)), np.zeros(len(deltas))
    for c in cats:
        v = deltas[c].fillna(0).to_numpy(dtype=float)
        left = np.where(v >= 0, pos, neg)
        ax.barh(y, v, left=left, color=ATTRIBUTION_COLOURS[c], label=c.replace("_", " "))
        pos, neg = pos + np.clip(v, 0, None), neg + np.clip(v, None, 0)
    ax.scatter(deltas[cats].fillna(0).sum(axis=1), y, marker="|", s=400, color="black", zorder=3,
               label="whole difference")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y, deltas.index, fontsize=8)
    ax.set_xlabel("profiled step: ms more (right) or less (left) than full fine-tuning")
    ax.set_title(f"Where the difference goes, measured\n{title}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, out, name)


def memory_budget(searched: pd.DataFrame, out: Path, name: str) -> list[Path]:
    """Tokens/s against peak memory: every probe that fitted, one line per configuration; the
    budget as a vertical line. Where a configuration's line ends is what the budget allows it."""
    fig, ax = plt.subplots(figsize=(8.5, 4.4))
    for _, r in searched.iterrows():
        fitted = sorted((p["peak_bytes"], p["tokens_per_s"], p["batch_size"]) for p in (r.search_probes or [])
                        if p["fits"] and p["tokens_per_s"])
        if not fitted:
            continue
        x, y, b = zip(*fitted)
        label = strategy_label(r)
        ax.plot([v / 2**20 for v in x], y, marker="o", color=colour(r.strategy), label=label)
        i = b.index(max(b))  # the largest batch that fitted (peaks are measured, so not always the rightmost)
        ax.annotate(f"batch {b[i]}", (x[i] / 2**20, y[i]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    for gb in searched.budget_gb.dropna().unique():
        ax.axvline(gb * 1024, color="grey", ls=":", lw=1)
    ax.set_xlabel("peak memory (MiB)")
    ax.set_ylabel("tokens per second")
    ax.set_title("Throughput against memory; dotted: the budget", fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, out, name)


_SPLIT = ("parameters", "gradients", "optimizer", "activations", "temporaries", "buffers", "other")


def projection(g: pd.DataFrame, out: Path, name: str) -> list[Path]:
    """PROJECTED: memory by category per configuration against each device's capacity (left); the
    step split into its three parts, compute, host and exposed communication, per configuration and
    device (middle); step time against peak memory, each device's Pareto front drawn (right)."""
    configs = g.drop_duplicates("configuration")
    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(18, 4.8))
    bottom = np.zeros(len(configs))
    for i, c in enumerate(_SPLIT):
        v = configs[f"split_{c}"].to_numpy(dtype=float) / 2**30 if f"split_{c}" in configs else np.zeros(len(configs))
        ax.bar(range(len(configs)), v, bottom=bottom, label=c, color=plt.cm.tab10(i))
        bottom += v
    for k, (device, mem) in enumerate(g.groupby("device", sort=False).memory_bytes.first().items()):
        ax.axhline(mem / 2**30, color="k", ls=("-", "--", ":", "-.")[k % 4], lw=1, label=f"{device} capacity")
    ax.set_xticks(range(len(configs)), configs.configuration, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("GiB at the peak (PROJECTED)")
    ax.legend(fontsize=6)
    labels = [f"{r.configuration} @ {r.device}" for _, r in g.iterrows()]
    host = g.host_wait_ms.fillna(g.step_ms - g.busy_ms) if "host_wait_ms" in g else g.step_ms - g.busy_ms
    comm = g.exposed_comm_ms.fillna(0.0) if "exposed_comm_ms" in g else host * 0
    left = np.zeros(len(g))
    for part, v, colour_ in (("compute (kernels running)", g.busy_ms, "#1f77b4"),
                             ("host (device waits to be issued)", host.clip(lower=0), "#bbbbbb"),
                             ("exposed communication", comm, "#d62728")):
        bx.barh(range(len(g)), v, left=left, label=part, color=colour_)
        left += v.to_numpy(dtype=float)
    bx.set_yticks(range(len(g)), labels, fontsize=6)
    bx.set_xlabel("ms per step (PROJECTED)")
    bx.legend(fontsize=6)
    for k, (device, dg) in enumerate(g.groupby("device", sort=False)):
        x, y = dg.peak.to_numpy(dtype=float) / 2**30, dg.step_ms.to_numpy(dtype=float)
        cx.scatter(x, y, marker="osD^v"[k % 5], label=device, color=plt.cm.tab10(k))
        for xi, yi, c in zip(x, y, dg.configuration):
            cx.annotate(c, (xi, yi), fontsize=5, xytext=(2, 2), textcoords="offset points")
        front, best = [], np.inf  # no other configuration both faster and smaller
        for i in np.argsort(x, kind="stable"):
            if y[i] < best:
                front.append(i)
                best = y[i]
        cx.plot(x[front], y[front], color=plt.cm.tab10(k), lw=1)
    cx.set_xlabel("peak GiB (PROJECTED)")
    cx.set_ylabel("ms per step (PROJECTED)")
    cx.set_title("Step against memory; lines: each device's Pareto front", fontsize=8)
    cx.legend(fontsize=6)
    fig.suptitle("PROJECTED, not measured: " + str(g.model.iloc[0]), fontsize=9)
    fig.tight_layout()
    return _save(fig, out, name)
