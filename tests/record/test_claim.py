"""One owner per job directory (bench/record/claim.py): an O_EXCL claim, taken over once its
process is gone."""
import os
import subprocess
import sys

from bench.record.claim import CLAIM, claim, owner, release
from tests.conftest import ROOT


def test_a_claim_is_one_owner_at_a_time_and_a_dead_owners_claim_is_taken_over(tmp_path):
    job = tmp_path / "0"
    assert claim(job) is None and owner(job).pid == os.getpid()
    assert claim(job) is None  # already ours
    # Another live process's claim stands; once that process is gone, its claim is stale.
    child = subprocess.Popen([sys.executable, "-c", f"from bench.record.claim import claim; import sys; "
                              f"claim({str(job / 'x')!r}); sys.stdout.write('y'); sys.stdout.flush(); "
                              f"sys.stdin.read()"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdout.read(1) == b"y"
    held = claim(job / "x")
    assert held is not None and held.pid == child.pid
    child.communicate(b"")  # it exits without releasing: a crash
    assert owner(job / "x") is None and claim(job / "x") is None
    release(job)
    assert not (job / CLAIM).exists()
    # A claim half-written this instant stands; a damaged old one does not.
    (job / CLAIM).write_text("{")
    assert claim(job) is not None
    os.utime(job / CLAIM, (0, 0))
    assert claim(job) is None
