"""The one exception-to-status mapping of a job and a rank."""
import torch

from bench.config import ConfigError
from bench.failure import failure
from bench.measure.protocol import Diverged, OutOfMemory


def test_each_exception_has_its_status_and_the_fields_that_explain_it():
    assert failure(ConfigError("lora.rank", "must be >= 1")) [0] == "invalid"
    assert failure(ConfigError("lora.rank", "must be >= 1"))[1].key == "lora.rank"
    status, out = failure(Diverged(7, 4.2))
    assert status == "diverged" and (out.failed_step, out.last_finite_loss) == (7, 4.2)
    status, out = failure(OutOfMemory(3, "host", "RSS passed the cap"))
    assert status == "oom" and (out.failed_step, out.oom_where) == (3, "host")
    status, out = failure(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert status == "oom" and out.oom_where == "cuda" and "before training" in out.reason
    assert failure(KeyboardInterrupt())[0] == "interrupted"
    status, out = failure(ValueError("boom"))
    assert status == "error" and out.reason == "ValueError: boom" and out.traceback
