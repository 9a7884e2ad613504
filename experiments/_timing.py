"""Timing and memory helpers shared by the speed experiments."""

import dataclasses
import os
import pathlib
import platform
import statistics
import subprocess
import sys
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


def median_times_in_rounds(fns: dict, repeats: int, warmup: int = 1, seed: int = 0) -> dict:
    """Median wall time in seconds of each `fns[name]()`, timed in `repeats` rounds of one
    call each (after `warmup` untimed rounds), in a new random order every round (seeded):
    a machine whose speed drifts during the measurement slows every function alike, where
    timing one function's calls after another's would charge the drift to whichever ran
    when it happened, and no function always follows the same one."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            jax.block_until_ready(fns[name]())
    rng = np.random.default_rng(seed)
    times = {name: [] for name in names}
    for _ in range(repeats):
        for i in rng.permutation(len(names)):
            start = time.perf_counter()
            jax.block_until_ready(fns[names[i]]())
            times[names[i]].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


# glibc's malloc serves a block of 32 MiB or more with its own mmap and unmaps it when it is
# freed. XLA:CPU allocates a compiled program's temporaries as one such block at every call,
# so every step of a training loop faults the whole block in again: the kernel zeroes each
# page, and on a virtual machine that hands freed memory back to its host (as this project's
# CPU machine does) the host must also supply each page afresh, 2.6 to 3.3 s per GiB measured
# here. These glibc settings (read when a process starts) keep freed memory in the process:
# no mmap for large blocks, no trimming of the heap's top, one arena, so that the next step
# reuses the same pages.
KEEP_FREED_MEMORY = (
    "glibc.malloc.mmap_max=0",
    "glibc.malloc.trim_threshold=68719476736",
    "glibc.malloc.arena_max=1",
)


def uses_glibc() -> bool:
    """Whether this Python runs on glibc (whose `GLIBC_TUNABLES` the allocator reads)."""
    return platform.libc_ver()[0] == "glibc"


def freed_memory_kept(environ=None) -> bool:
    """Whether `environ` (default: this process's) sets every `KEEP_FREED_MEMORY` tunable."""
    environ = os.environ if environ is None else environ
    present = set(environ.get("GLIBC_TUNABLES", "").split(":"))
    return all(setting in present for setting in KEEP_FREED_MEMORY)


def environment_keeping_freed_memory(environ=None) -> dict:
    """A copy of `environ` whose `GLIBC_TUNABLES` adds `KEEP_FREED_MEMORY` to its own
    settings (ours win where both name one tunable)."""
    environ = dict(os.environ if environ is None else environ)
    names = {setting.split("=")[0] for setting in KEEP_FREED_MEMORY}
    own = [s for s in environ.get("GLIBC_TUNABLES", "").split(":") if s]
    kept = [s for s in own if s.split("=")[0] not in names]
    environ["GLIBC_TUNABLES"] = ":".join(kept + list(KEEP_FREED_MEMORY))
    return environ


def rerun_keeping_freed_memory(command: str, argv: list[str]) -> int | None:
    """For `--allocator keep`: run `python -m experiments *argv` in a new process whose
    allocator keeps freed memory (`environment_keeping_freed_memory`) and return its exit
    code, or 2 with a message where this Python does not run on glibc; `None` when this
    process keeps freed memory already (measure here)."""
    if freed_memory_kept():
        return None
    if not uses_glibc():
        print(
            f"{command}: --allocator keep sets glibc's GLIBC_TUNABLES and this Python does not "
            "run on glibc; use --allocator default.",
            file=sys.stderr,
        )
        return 2
    env = environment_keeping_freed_memory()
    print(f"Running in a new process with GLIBC_TUNABLES={env['GLIBC_TUNABLES']}", flush=True)
    return subprocess.call([sys.executable, "-m", "experiments", *argv], env=env)


def page_faults() -> int:
    """Minor page faults of this process so far (pages it touched for the first time since
    the kernel gave them); 0 where `resource` is unavailable."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not Unix
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


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
