"""Study presets: each composes, expands to its intended grid, and every job is a valid config."""
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from bench.config import load_config
from bench.cli import group_options
from bench.job import config_key
from bench.studies import expand
from tests.conftest import reported, ROOT, compose_cfg, run_cli

# study -> (jobs Hydra launches, distinct measurements after `full` dedup)
GRIDS = {
    "minimind_88": (15, 15), "minimind_88_cpu": (15, 15),
    "minimind_square": (12, 10),   # 2 repeats x (full once + lora_square and lora_attn at 2 ranks)
    "crossover": (180, 180), "crossover_gpu": (96, 96),  # 2 repeats x the map
    "rank_sweep": (81, 57),        # 3 repeats (the default) x (full once + 2 strategies x 9 ranks)
    "depth": (16, 10),             # 2 repeats x (full once + 4 depths)
    "dropout": (12, 9),            # 3 repeats x (full once + 2 dropouts)
    "init": (72, 39),              # 3 repeats x (full once + 2 inits x 2 scalings x 3 LoRA+ ratios)
    "overhead": (10, 10),
    "backends": (72, 72),          # 3 repeats x 2 strategies x 2 ranks x 2 alphas x (eager, fused, peft)
    "fixes": (36, 30),             # 3 repeats x 2 cells x (full: eager = fused, compiled; lora_all x 3 fixes)
    "fixes_gpu": (48, 42),         # the same with CUDA graphs
    "adamw": (24, 24),             # 3 repeats x 2 cells x (full, lora_all) x (default AdamW, fused)
    "memory_budget": (8, 8),       # one search per configuration: full, lora_all, lora_qk, QLoRA, each +- checkpointing
    "distributed": (27, 27),       # 3 repeats x (single, 2 x ddp, 2 x fsdp) x (full, lora_all, lora_qk)
    "distributed_gpu": (27, 27),
    "launch_bound": (6, 6),        # 3 repeats x (full, lora_all)
    "variants": (48, 48),          # 3 repeats x 2 cells x (full, lora_all, QLoRA, DoRA) x checkpointing on/off
    "projection": (60, 60),        # PROJECTED: 3 models x 2 batches x 5 configurations x checkpointing on/off
    "projection_88": (5, 5),       # PROJECTED: MiniMind #88's five configurations
    "projection_91": (4, 4),       # PROJECTED: #88's configurations on 2 x RTX 4090, DDP
    "projection_664": (2, 2),      # PROJECTED: full and LoRA, roberta-base's sizes, 8 x A100, ZeRO-3
    "projection_5398": (4, 4),     # PROJECTED: freeze and LoRA, each on 4 and 8 x A100
}


def test_every_study_is_listed():
    assert sorted(GRIDS) == group_options("study")


def _jobs(study, every: int = 1):
    """Every job of a study (or every `every`-th), composed as its job would be; one Hydra context for
    all of them (a context per job rebuilt the config repository each time: 180 jobs took 17 s). A job
    that differs from one composed already only in `repeat=` is that node with its repeat set: the
    key is top-level and nothing interpolates it (tested), and composing each repeat again took 40 s."""
    import copy

    from hydra import compose, initialize_config_dir

    out, jobs, composed = [], list(expand(study)), {}  # expand() composes in a context of its own
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        for job in jobs[::every]:
            rest = tuple(o for o in job if not o.startswith("repeat="))
            if rest not in composed:
                node = OmegaConf.to_container(compose("config", overrides=[f"+study={study}", *job]), resolve=True)
                composed[rest] = (node, load_config(node))
                out.append((job, node, composed[rest][1]))
                continue
            node = copy.deepcopy(composed[rest][0])
            node["repeat"] = next(int(o.split("=", 1)[1]) for o in job if o.startswith("repeat="))
            out.append((job, node, composed[rest][1]))
    return out


def test_a_repeat_changes_nothing_but_the_repeat_key():
    """What _jobs relies on: two repeats of one job compose to nodes equal but for `repeat`."""
    a, b = (OmegaConf.to_container(compose_cfg(["+study=dropout", f"repeat={r}"]), resolve=True) for r in (0, 2))
    a.pop("hydra", None), b.pop("hydra", None)
    assert (a.pop("repeat"), b.pop("repeat")) == (0, 2) and a == b


# Maps whose every cell is distinct (no full fine-tuning to deduplicate): their override lists show the
# grid, and one job in SAMPLE composes (each composes in 60 ms; 276 of them took 17 s of the suite).
SAMPLE = {"crossover": 6, "crossover_gpu": 6}


@pytest.mark.parametrize("study", sorted(GRIDS))
def test_study_expands_to_its_grid(study):
    launched, distinct = GRIDS[study]
    if study in SAMPLE:
        grid = list(expand(study))
        assert len(grid) == launched and len({tuple(sorted(j)) for j in grid}) == distinct == launched
        jobs = _jobs(study, SAMPLE[study])
        assert len({config_key(node) for _, node, _ in jobs}) == len(jobs) == -(-launched // SAMPLE[study])
        return
    jobs = _jobs(study)
    assert len(jobs) == launched
    assert len({config_key(node) for _, node, _ in jobs}) == distinct


def test_fixes_study_runs_each_fix_at_both_cells():
    seen = {(c.model.name, c.model.dim, c.train.batch_size, c.train.seq_len, c.strategy.name,
             c.lora.impl if c.strategy.name != "full" else None, c.train.compile) for _, _, c in _jobs("fixes")}
    cells = {("tiny", 32, 1, 16), ("minimind_v1", 512, 2, 64)}
    assert {s[:4] for s in seen} == cells
    for cell in cells:
        assert {s[4:] for s in seen if s[:4] == cell} == {
            ("full", None, False), ("full", None, True), ("lora_all", "eager", False),
            ("lora_all", "fused", False), ("lora_all", "eager", True)}


def test_distributed_study_compares_on_equal_ranks():
    seen = {(c.dist.nproc, c.dist.mode, c.strategy.name) for _, _, c in _jobs("distributed")}
    assert {(n, m) for n, m, _ in seen} == {(1, "ddp"), (2, "ddp"), (2, "fsdp")}  # 2 ranks: no GPU here
    assert {s for *_, s in seen} == {"full", "lora_all", "lora_qk"}


def test_memory_budget_study_searches_each_strategy():
    jobs = _jobs("memory_budget")
    assert {c.strategy.name for _, _, c in jobs} == {"full", "lora_all", "lora_qk"}
    assert {(c.quant.base, c.train.checkpointing) for _, _, c in jobs} == {
        (q, k) for q in ("none", "nf4") for k in ("none", "blocks")}
    assert all(c.search.batch and c.train.memory_budget_gb for _, _, c in jobs)


def test_minimind_88_is_the_reported_setting():
    jobs = _jobs("minimind_88")
    for _, _, cfg in jobs:
        assert (cfg.model.name, cfg.train.batch_size, cfg.train.seq_len, cfg.train.precision, cfg.device) == \
            ("minimind_v1", 32, 512, "bf16", "cuda")
    five = {(c.strategy.name, c.lora.rank if c.strategy.name != "full" else None,
             c.lora.include_head if c.strategy.name == "lora_all" else None) for _, _, c in jobs}
    assert five == {("full", None, None), ("lora_all", 2, True), ("lora_all", 8, True),
                    ("lora_qk", 8, None), ("lora_last", 8, None)}


def test_study_keys_can_still_be_overridden():
    cfg = load_config(compose_cfg(["+study=crossover", "device=cuda", "train.steps=3"]))
    assert cfg.device == "cuda" and cfg.train.steps == 3
    square = _jobs("minimind_square")
    assert all(c.lora.init == "gaussian" and c.lora.scale == 1.0 for _, _, c in square)
    init = _jobs("init")
    assert {c.lora.lr_ratio for _, _, c in init} == {1.0, 4.0, 16.0}
    assert all(c.model.checkpoint == "auto" and c.data.shift == 0.25 for _, _, c in init)


def test_minimind_88_cpu_runs_end_to_end(tmp_path):
    sweep = tmp_path / "mm88"
    res = run_cli(["+study=minimind_88_cpu", "hydra.sweeper.params.repeat=0", "train.steps=2", "train.profile=false",
                   "train.paired_steps=2",
                   "train.warmup_steps=0", "train.batch_size=1", "train.seq_len=16", "train.eval_batches=1",
                   "train.progress=false", f"hydra.sweep.dir={sweep}"], cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    md = (sweep / "report" / "report.md").read_text()
    for label in ("full", "lora_all r=2", "lora_all r=8", "lora_qk r=8", "lora_last r=8"):
        assert reported(md, label), label


def test_studies_help_and_a_study_without_plus():
    res = subprocess.run([sys.executable, "-m", "bench.studies", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0 and "python -m bench.studies" in res.stdout
    res = run_cli(["study=depth"], cwd=ROOT, timeout=120)
    err = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(err) == 1 and "write +study=depth" in err[0]
