"""Timing and memory helpers shared by the speed experiments."""

import dataclasses
import os
import pathlib
import platform
import statistics
import time
from collections.abc import Callable

import jax
import numpy as np


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time in seconds of `fn()` over `repeats` calls after `warmup` calls
    (each call waits for its result)."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compiled_peak_bytes(jitted, *args) -> int | None:
    """XLA's own figure for a compiled function: temporary buffers plus outputs, in bytes
    (arguments excluded). `None` when the backend does not report it."""
    try:
        compiled = jitted.lower(*args).compile()
    except Exception:  # pragma: no cover - backend that cannot compile ahead of time
        return None
    return peak_bytes(compiled)


def peak_bytes(compiled) -> int | None:
    """`compiled_peak_bytes` of a program already compiled (`jax.jit(f).lower(...).compile()`)."""
    try:
        analysis = compiled.memory_analysis()
    except Exception:  # pragma: no cover - backend without memory analysis
        return None
    if analysis is None:  # pragma: no cover
        return None
    return int(analysis.temp_size_in_bytes + analysis.output_size_in_bytes)


@dataclasses.dataclass(frozen=True)
class Machine:
    """Where a measurement was taken."""

    device: str
    cpu: str
    cores: int
    jax_version: str

    @classmethod
    def here(cls) -> "Machine":
        device = jax.devices()[0]
        kind = getattr(device, "device_kind", device.platform)
        cpu = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        cpu = line.split(":", 1)[1].strip()
                        break
        except OSError:  # pragma: no cover - not Linux
            pass
        return cls(
            device=f"{device.platform}:{kind}",
            cpu=cpu,
            cores=os.cpu_count() or 0,
            jax_version=jax.__version__,
        )

    def line(self) -> str:
        return f"device {self.device}; CPU {self.cpu} ({self.cores} cores); JAX {self.jax_version}"


def emit_report(text: str, out: str | None) -> None:
    """Print a report and, when `out` is given, write it there (creating folders)."""
    print()
    print(text)
    if out:
        path = pathlib.Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"Wrote {path}")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def mib(nbytes: int | None) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 2**20:.0f}"


def geomean(xs) -> float:
    return float(np.exp(np.mean(np.log(np.asarray(xs)))))
