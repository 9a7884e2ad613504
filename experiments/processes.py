"""Data-parallel training over several processes: `python -m experiments run ...
--processes N` on this machine, or one process per task of a cluster launcher.

`--processes N` (N > 1) checks every option, then starts N copies of the same command, each
with one CPU device, joined by `jax.distributed` through a coordinator on 127.0.0.1: each
copy gets `--coordinator 127.0.0.1:PORT --num-processes N --process-id I`. Process 0's
output is shown; when one process fails, the others are stopped and the command exits with
its status. Under a cluster launcher, every task runs the command with `--distributed` (JAX
reads the coordinator, the process count and the process id from the launcher's
environment: SLURM, Open MPI) or with the three options given explicitly.

Every process generates the same global batch (same seed, same step), takes its rows and
trains on the global arrays (`recurrax.shard_batch`, `recurrax.replicate`,
`recurrax.make_data_parallel_train_step`); process 0 writes the run folder.
"""

import argparse
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time


# Seconds that `jax.distributed.initialize` waits for every process to join (a launcher
# may start the tasks of a job some time apart), as JAX's own default.
INITIALIZATION_TIMEOUT = 300
SPAWNED = "--spawned-by"  # the option the launching process appends (hidden): its id


def add_options(run) -> None:
    """The options of `run` that say how it is launched (not part of the run's
    configuration: a run may be resumed with another process count)."""
    group = run.add_argument_group(
        "several processes (data parallel; the batch is split over the processes)"
    )
    group.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help="train data-parallel over N processes on this machine, one CPU device each "
        "(default 1: this process alone); --batch-size must be divisible by N",
    )
    group.add_argument(
        "--distributed",
        action="store_true",
        help="one process of a job that a cluster launcher started (srun, mpirun): "
        "jax.distributed reads the coordinator, the process count and this process's id from "
        "the launcher's environment",
    )
    group.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        help="join the processes of a run through this coordinator (process 0's address and a "
        "free port), with --num-processes and --process-id",
    )
    group.add_argument("--num-processes", type=int, metavar="N", help="processes of the run")
    group.add_argument("--process-id", type=int, metavar="I", help="this process's id, 0..N-1")
    group.add_argument(SPAWNED, type=int, help=argparse.SUPPRESS)


def joins(args) -> bool:
    """Whether this process is one of several that `jax.distributed` joins."""
    return bool(
        args.distributed
        or args.coordinator is not None
        or args.num_processes is not None
        or args.process_id is not None
    )


def check(args, batch_size: int) -> None:
    """Refuse launch options that cannot run, before any work.

    **Raises:** `ValueError` naming the option and the value."""
    if args.processes < 1:
        raise ValueError(f"--processes must be a positive integer, got {args.processes}.")
    if args.processes > 1 and joins(args):
        raise ValueError(
            f"--processes {args.processes} starts its own processes on this machine; it cannot "
            f"be combined with --distributed, --coordinator, --num-processes or --process-id, "
            f"which make this process one of a run that a launcher started."
        )
    if args.coordinator is not None:
        host, _, port = args.coordinator.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(
                f"--coordinator must be HOST:PORT (e.g. 10.0.0.1:12355), got {args.coordinator!r}."
            )
    if args.num_processes is not None and args.num_processes < 1:
        raise ValueError(f"--num-processes must be a positive integer, got {args.num_processes}.")
    if args.process_id is not None:
        count = args.num_processes
        if args.process_id < 0 or (count is not None and args.process_id >= count):
            bound = f" below --num-processes {count}" if count is not None else ""
            raise ValueError(f"--process-id must be an integer >= 0{bound}, got {args.process_id}.")
    count = args.processes if args.processes > 1 else args.num_processes
    if count is not None and batch_size % count:
        option = "--processes" if args.processes > 1 else "--num-processes"
        raise ValueError(
            f"--batch-size {batch_size} must be divisible by the number of processes "
            f"({option} {count}): each process trains on an equal share of every batch."
        )


def join(args) -> None:
    """Initialise `jax.distributed` for this process (before any JAX computation); a process
    started by `launch` also stops when its launcher is gone.

    **Raises:** `RuntimeError` when the processes cannot join."""
    import jax

    if getattr(args, "spawned_by", None) is not None:
        _watch_parent(args.spawned_by)
    # CPU devices exchange data through gloo (without it, CPU collectives across processes
    # are not implemented); accelerators use their own.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address=args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
            initialization_timeout=INITIALIZATION_TIMEOUT,
        )
    except Exception as error:  # JAX raises several kinds (ValueError, RuntimeError, ...)
        hint = (
            " (--distributed reads a cluster launcher's environment, SLURM's or Open MPI's; "
            "elsewhere give --coordinator, --num-processes and --process-id)"
            if args.distributed
            else ""
        )
        raise RuntimeError(f"jax.distributed could not join the processes: {error}{hint}") from None


def _watch_parent(parent: int) -> None:
    """Exit when the launching process has gone (killed without a chance to stop us)."""

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="recurrax-parent-watch").start()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _environment() -> dict:
    """The children's environment: CPU only, one device each (no simulated devices), and
    this process's `recurrax` and `experiments` first on the path."""
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    flags = [
        f
        for f in env.get("XLA_FLAGS", "").split()
        if not f.startswith("--xla_force_host_platform_device_count")
    ]
    env["XLA_FLAGS"] = " ".join(flags)
    paths = [  # the folders holding the packages (found without importing them)
        os.path.dirname(os.path.dirname(importlib.util.find_spec(name).origin))
        for name in ("experiments", "recurrax")
    ]
    env["PYTHONPATH"] = os.pathsep.join(
        dict.fromkeys([*paths, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))])
    )
    return env


def launch(
    argv: list[str],
    processes: int,
    *,
    program: list[str] | None = None,
    poll: float = 0.2,
    grace: float = 5.0,
) -> int:
    """Run `python -m experiments ARGV` (`program`: another command than
    `python -m experiments`) as `processes` processes joined by `jax.distributed` on
    127.0.0.1, and wait for them.

    Process 0 writes to this process's standard output and error; the others' output is
    kept, and shown when one of them fails. When a process fails, the others are given
    `grace` seconds to stop by themselves (an error every process meets, such as a
    diverging loss, is then reported by process 0), then killed; all of them are killed
    when this process is interrupted or terminated.

    **Returns:** 0, or the exit status of the process that failed (process 0's, when it
    failed too)."""
    port = _free_port()
    env = _environment()
    logs = [tempfile.TemporaryFile(mode="w+") for _ in range(1, processes)]
    children: list[subprocess.Popen] = []
    main_thread = threading.current_thread() is threading.main_thread()

    def terminate(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate) if main_thread else None
    try:
        for i in range(processes):
            command = [
                *(program or [sys.executable, "-m", "experiments"]), *argv,
                SPAWNED, str(os.getpid()), "--processes", "1",
                "--coordinator", f"127.0.0.1:{port}",
                "--num-processes", str(processes), "--process-id", str(i),
            ]  # fmt: skip
            quiet = {} if i == 0 else {"stdout": subprocess.DEVNULL, "stderr": logs[i - 1]}
            children.append(subprocess.Popen(command, env=env, **quiet))
        while True:
            codes = [child.poll() for child in children]
            if all(code == 0 for code in codes):
                return 0
            failed = [i for i, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                break
            time.sleep(poll)
        deadline = time.monotonic() + grace
        while any(c.poll() is None for c in children) and time.monotonic() < deadline:
            time.sleep(poll)
        _stop(children)
        codes = [child.returncode for child in children]
        if codes[0] > 0:  # process 0 failed and said why
            return codes[0]
        first = failed[0]
        if first > 0:
            logs[first - 1].seek(0)
            tail = logs[first - 1].read().strip().splitlines()[-20:]
            print("\n".join(f"[process {first}] {line}" for line in tail), file=sys.stderr)
        print(
            f"error: process {first} of {processes} failed (exit status {codes[first]}); "
            f"the others were stopped.",
            file=sys.stderr,
        )
        return codes[first] if codes[first] > 0 else 1
    finally:
        _stop(children)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        for log in logs:
            log.close()


def _stop(children: list[subprocess.Popen]) -> None:
    for child in children:
        if child.poll() is None:
            child.kill()
    for child in children:
        child.wait()


def strip_launch(argv: list[str]) -> list[str]:
    """The command as the user gave it: without what `launch` appended for its children."""
    return argv[: argv.index(SPAWNED)] if SPAWNED in argv else argv
