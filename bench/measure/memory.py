"""Peak memory: the CUDA allocator, NVML (what nvidia-smi shows) and host RSS.

Hydra's basic launcher runs every job of a sweep in one process, so each job resets these
counters before it starts; otherwise one job's peak would leak into the next.
"""
from __future__ import annotations

import gc
import resource
import signal
import sys
from pathlib import Path

import psutil
import torch

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


class HostPeak:
    """Peak resident set size of this process since `reset()`.

    Linux resets the kernel's high-water mark (VmHWM) when "5" is written to clear_refs;
    where that is not possible, it falls back to the process-lifetime peak (ru_maxrss) and
    says so through `since_reset`.
    """

    def __init__(self):
        self.since_reset = False
        self._proc = psutil.Process()

    def reset(self) -> None:
        try:
            _CLEAR_REFS.write_text("5")
            self.since_reset = True
        except OSError:
            self.since_reset = False

    def current(self) -> int:
        return self._proc.memory_info().rss

    def peak(self) -> int:
        if self.since_reset:
            for line in _STATUS.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def reset_peaks(device: torch.device) -> None:
    """Start the peak counters afresh (and drop garbage first, so it is not counted)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def device_peaks(device: torch.device) -> dict[str, int | None]:
    if device.type != "cuda":
        return {"device_peak_allocated_bytes": None, "device_peak_reserved_bytes": None}
    return {"device_peak_allocated_bytes": torch.cuda.max_memory_allocated(device),
            "device_peak_reserved_bytes": torch.cuda.max_memory_reserved(device)}


def nvml_handle(device: torch.device):
    """The NVML handle of a CUDA device, matched by UUID (CUDA_VISIBLE_DEVICES renumbers devices,
    NVML does not). Raises where NVML is unavailable; callers treat that as a missing figure."""
    import pynvml

    pynvml.nvmlInit()
    try:
        uuid = str(torch.cuda.get_device_properties(device).uuid)
        return pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
    except Exception:
        return pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)


def nvml_used_bytes(device: torch.device) -> int | None:
    """Device memory in use as NVML reports it (all processes), or None without NVML."""
    if device.type != "cuda":
        return None
    try:
        import pynvml

        return int(pynvml.nvmlDeviceGetMemoryInfo(nvml_handle(device)).used)
    except Exception:  # no driver library, no permission: a missing figure, not a failed job
        return None


class HostMemoryExceeded(RuntimeError):
    """Raised in the main thread, inside the step, when the host memory guard trips."""


class HostMemoryGuard:
    """Stops the job before the machine does: when this process's RSS passes `cap_bytes`.

    A daemon thread samples RSS every `interval` seconds (cheap: one /proc read) and, past the
    cap, raises HostMemoryExceeded in the main thread through a signal of its own (SIGUSR1), so
    the check happens *during* a step, and Ctrl-C keeps its own meaning (bench/signals.py).
    """

    def __init__(self, cap_bytes: int | None, interval: float = 0.05):
        import threading

        self.cap = cap_bytes
        self.interval = interval
        self.tripped_at: int | None = None  # the RSS that crossed the cap
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="host-memory-guard")
        self._previous = None

    def _raise(self, signum, frame):
        raise HostMemoryExceeded(f"RSS {self.tripped_at / 2**30:.2f} GiB passed the cap of {self.cap / 2**30:.2f} GiB")

    def _watch(self) -> None:
        import _thread

        proc = psutil.Process()
        while not self._stop.wait(self.interval):
            rss = proc.memory_info().rss
            if rss > self.cap:
                self.tripped_at = rss
                _thread.interrupt_main(signal.SIGUSR1)
                return

    def __enter__(self) -> "HostMemoryGuard":
        import threading

        if self.cap is not None and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGUSR1, self._raise)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._previous is not None:
            signal.signal(signal.SIGUSR1, self._previous)
