import pytest

from tests.fixtures import SLOW_BY_OPS, record, write


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    write(root, "0", record(rank=None))
    write(root, "1", record(strategy="full", rank=None, repeat=1, step=22.0, spread=(21, 23)))
    write(root, "2", record(**SLOW_BY_OPS))
    write(root, "3", {**record(strategy="lora_qk", rank=512, status="invalid",
                               reason="lora.rank: 512 exceeds min(in, out)=64 of <script>alert(1)</script>")})
    write(root, "4", '{"schema": 1, "status": "ok", "time": {')  # cut off mid-write
    write(root, "5", record(strategy="full", status="duplicate", same_as=str(root / "0")))
    (root / "6" / ".hydra").mkdir(parents=True)  # a job that never wrote its record
    return root
