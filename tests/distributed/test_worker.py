"""A rank's own record: written whatever happens to it (the launch tests run real ranks)."""
import json
import os

from bench.distributed.worker import main
from bench.record.store import read_record
from tests.conftest import FAST, compose_cfg
from bench.job import to_node


def test_a_rank_that_cannot_start_leaves_its_record(tmp_path, monkeypatch):
    # A rank with no process group to join (no torchrun around it) records why and exits non-zero.
    (tmp_path / "config.json").write_text(json.dumps(to_node(compose_cfg([*FAST, "dist.nproc=2"]))))
    for k in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setitem(os.environ, "RANK", "1")
    monkeypatch.setitem(os.environ, "WORLD_SIZE", "2")
    assert main([str(tmp_path)]) == 1
    rec = read_record(tmp_path / "rank1" / "metrics.json")
    assert rec.status == "error" and rec.outcome.reason
    assert (tmp_path / "rank1" / "pid").read_text() == str(os.getpid())
