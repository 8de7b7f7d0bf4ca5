"""Study presets (conf/study/*.yaml): list them, and expand one into its jobs as Hydra would.

    python -m bench.studies                 # the studies and their job counts
    python -m bench.studies minimind_88     # its jobs, one line of overrides each
"""
from __future__ import annotations

import sys

from bench.cli import CONF_DIR, group_options


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


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if not argv:
        for name in group_options("study"):
            print(f"{name}: {len(expand(name))} jobs")
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
