r"""A directory of the last few checkpoints of a training run: saving with rotation and
restoring the newest file that can be read.

The file format itself (one atomic file per checkpoint) is that of
[`recurrax.save_checkpoint`][]; this module only names, orders, rotates and falls back
between such files.
"""

import os
import pathlib
import re
import warnings
from typing import Any

import equinox as eqx
import jax
import numpy as np
from jax.experimental import multihost_utils
from jaxtyping import PRNGKeyArray, PyTree

from ._checkpoint import (
    _check_step,
    _fsync_directory,
    _UnreadableCheckpoint,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    read_checkpoint_header,
    save_checkpoint,
)


def _one_copy(leaf: Any) -> Any:
    """This process's copy of a replicated global array (other leaves unchanged)."""
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        if not leaf.is_fully_replicated:
            raise ValueError(
                f"CheckpointManager.save: on several processes every array must be replicated "
                f"(recurrax.replicate), got one of shape {leaf.shape} sharded as "
                f"{leaf.sharding}."
            )
        return leaf.addressable_data(0)
    return leaf


class CheckpointManager:
    """Keeps the last few checkpoints of a training run in a directory, as
    `{prefix}-{step:08d}.rcx` files, and restores the newest one that can be read.

    Keeping several is what makes a run resumable whatever happens: each file is written
    atomically by [`recurrax.save_checkpoint`][], older ones are deleted only after the new
    one is in place, and a newest file that cannot be read (damaged by a disk or a copy) is
    skipped, with a warning, for the one before it.

    A directory should have one writer. Opening a manager on an existing directory, and
    every `save`, delete the temporary files that writers killed mid-write (on this machine)
    left behind. Only regular files count as checkpoints: anything else named like one (a
    directory, say) is ignored, neither read nor deleted nor counted towards `keep`.

    !!! example

        ```python
        import tempfile

        import equinox as eqx
        import jax
        import optax
        import recurrax

        optimiser = optax.adam(1e-3)
        with tempfile.TemporaryDirectory() as directory:
            manager = recurrax.CheckpointManager(directory, keep=2)
            model = recurrax.LRU(4, 8, key=jax.random.key(0))
            opt_state = optimiser.init(eqx.filter(model, eqx.is_inexact_array))
            for step in (100, 200, 300):
                manager.save(step, model=model, opt_state=opt_state)
            assert manager.all_steps() == [200, 300]

            def make(key):  # skeletons: shapes and dtypes only, nothing allocated
                model = recurrax.LRU(4, 8, key=key)
                return model, optimiser.init(eqx.filter(model, eqx.is_inexact_array))

            model_like, opt_like = eqx.filter_eval_shape(make, jax.random.key(0))
            checkpoint = manager.restore(model=model_like, opt_state=opt_like)
            assert checkpoint.step == 300
        ```
    """

    directory: pathlib.Path
    keep: int
    prefix: str

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, prefix: str = "checkpoint"):
        """**Arguments:**

        - `directory`: where the checkpoints go; created by the first `save`.
        - `keep`: how many checkpoints to keep, at least 1.
        - `prefix`: the start of the file names, without a path separator.

        **Raises:**

        `ValueError` naming the argument for a `keep` that is not a positive integer or a
        `prefix` that is empty, starts with a dot or holds a path separator.
        """
        if not (isinstance(keep, (int, np.integer)) and not isinstance(keep, bool) and keep > 0):
            raise ValueError(
                f"CheckpointManager: `keep` must be a positive integer, got keep={keep!r}."
            )
        separators = {"/", os.sep, os.altsep or "/"}
        if (
            not isinstance(prefix, str)
            or not prefix
            or prefix.startswith(".")
            or any(s in prefix for s in separators)
        ):
            raise ValueError(
                f"CheckpointManager: `prefix` must be a non-empty file name start without a "
                f"leading dot or path separator, got prefix={prefix!r}."
            )
        self.directory = pathlib.Path(directory)
        self.keep = int(keep)
        self.prefix = prefix
        self._name = re.compile(rf"{re.escape(prefix)}-(\d{{8,}})\.rcx")
        self._temporary = re.compile(rf"\.{re.escape(prefix)}-\d{{8,}}\.rcx\.tmp-(\d+)-\w+")
        if self.directory.is_dir():  # what killed writers left behind
            self._remove_stale_temporaries()

    def __repr__(self) -> str:
        directory = str(self.directory)
        return f"CheckpointManager({directory!r}, keep={self.keep}, prefix={self.prefix!r})"

    def path(self, step: int) -> pathlib.Path:
        """The file of the checkpoint of step `step` (whether or not it exists)."""
        step = _check_step("CheckpointManager.path", step)
        return self.directory / f"{self.prefix}-{step:08d}.rcx"

    def all_steps(self) -> list[int]:
        """The steps of the checkpoint files in the directory, in increasing order (whether
        or not the files can be read; only regular files); `[]` if the directory does not
        exist."""
        try:
            entries = list(os.scandir(self.directory))
        except (FileNotFoundError, NotADirectoryError):
            return []
        steps = []
        for entry in entries:
            match = self._name.fullmatch(entry.name)
            if match and f"{int(match.group(1)):08d}" == match.group(1):
                try:
                    regular = entry.is_file()
                except OSError:
                    regular = False
                if regular:  # a directory named like a checkpoint is not one
                    steps.append(int(match.group(1)))
        return sorted(steps)

    def save(
        self,
        step: int,
        *,
        model: PyTree,
        config: dict | None = None,
        opt_state: PyTree = None,
        state: eqx.nn.State | None = None,
        key: PRNGKeyArray | None = None,
        metadata: dict | None = None,
    ) -> pathlib.Path:
        """Save the checkpoint of step `step`, then delete the oldest beyond `keep`.

        **Arguments:**

        As [`recurrax.save_checkpoint`][], less `path`.

        **Returns:**

        The file written, `{directory}/{prefix}-{step:08d}.rcx`.

        **Raises:**

        As [`recurrax.save_checkpoint`][]. Nothing is deleted unless the new file is in place.

        !!! warning

            Files are ordered by step: a `step` below the newest one on disk is saved (with
            a warning) but does not become the one `latest` and `restore` pick.
        """
        step = _check_step("CheckpointManager.save", step)
        if self.path(step).is_dir():
            raise IsADirectoryError(
                f"CheckpointManager.save: '{self.path(step)}' is a directory, not a checkpoint "
                f"file; move it away to save step {step}."
            )
        if jax.process_count() == 1:
            return self._save(step, model, config, opt_state, state, key, metadata)
        # Several processes (multi-host): each passes the same replicated values; the first
        # writes, and every process waits until the file is in place.
        model, opt_state, state, key = jax.tree.map(_one_copy, (model, opt_state, state, key))
        written = self.path(step)
        if jax.process_index() == 0:
            written = self._save(step, model, config, opt_state, state, key, metadata)
        multihost_utils.sync_global_devices(f"recurrax checkpoint {self.path(step)}")
        return written

    def _save(self, step, model, config, opt_state, state, key, metadata) -> pathlib.Path:
        if not self.directory.is_dir():
            self.directory.mkdir(parents=True, exist_ok=True)
            _fsync_directory(self.directory.parent)  # make the new directory itself durable
        steps = self.all_steps()
        if steps and step < steps[-1]:
            warnings.warn(
                f"CheckpointManager.save: step {step} is below the newest step on disk, "
                f"{steps[-1]}, in '{self.directory}'; latest() and restore() will still pick "
                f"step {steps[-1]}.",
                stacklevel=3,
            )
        written = save_checkpoint(
            self.path(step),
            model=model,
            step=step,
            config=config,
            opt_state=opt_state,
            state=state,
            key=key,
            metadata=metadata,
        )
        steps = self.all_steps()
        older = [s for s in steps if s != step]
        for old in older[: max(len(steps) - self.keep, 0)]:
            try:
                os.unlink(self.path(old))
            except FileNotFoundError:
                pass
        self._remove_stale_temporaries()
        return written

    def _remove_stale_temporaries(self) -> None:
        """Delete temporary files of this prefix whose writer (a process of this machine) no
        longer runs: what a kill during `save` leaves behind."""
        if os.name == "nt":  # os.kill(pid, 0) would terminate the process there
            return
        try:
            names = os.listdir(self.directory)
        except OSError:
            return
        for name in names:
            match = self._temporary.fullmatch(name)
            if match is None or int(match.group(1)) == os.getpid():
                continue
            try:
                os.kill(int(match.group(1)), 0)
                continue  # the writer still runs
            except ProcessLookupError:
                pass
            except OSError:
                continue  # exists but belongs to someone else, or cannot tell
            try:
                os.unlink(self.directory / name)
            except OSError:
                pass

    def latest(self) -> pathlib.Path | None:
        """The checkpoint file with the highest step whose header can be read and whose size
        is right (see [`recurrax.read_checkpoint_header`][]); a newer file that fails these
        checks is skipped with a warning.

        **Returns:**

        The file, or `None` if there is none.
        """
        for step in reversed(self.all_steps()):
            path = self.path(step)
            try:
                read_checkpoint_header(path)
            except FileNotFoundError:
                continue
            except _UnreadableCheckpoint as error:
                warnings.warn(
                    f"CheckpointManager.latest: skipping step {step}: {error}", stacklevel=2
                )
                continue
            return path
        return None

    def restore(
        self,
        *,
        model: PyTree,
        opt_state: PyTree = None,
        state: eqx.nn.State | None = None,
        config: dict | None = None,
        require_key: bool = False,
    ) -> Checkpoint | None:
        """Load the newest checkpoint that can be read.

        A file that is truncated, corrupted or not a checkpoint is skipped with a warning for
        the one before it; a mismatch with the arguments (configuration, skeletons) is an
        error, since an older checkpoint is no answer to it.

        **Arguments:**

        As [`recurrax.load_checkpoint`][], less `path`.

        **Returns:**

        The [`recurrax.Checkpoint`][], or `None` if the directory holds no checkpoint (a
        fresh run).

        **Raises:**

        [`recurrax.CheckpointError`][] if no checkpoint file in the directory can be read, or
        as [`recurrax.load_checkpoint`][] for a mismatch.
        """
        steps = self.all_steps()
        failed = []
        for step in reversed(steps):
            path = self.path(step)
            try:
                return load_checkpoint(
                    path,
                    model=model,
                    opt_state=opt_state,
                    state=state,
                    config=config,
                    require_key=require_key,
                )
            except FileNotFoundError:
                continue
            except _UnreadableCheckpoint as error:
                warnings.warn(
                    f"CheckpointManager.restore: skipping step {step}, falling back to an older "
                    f"checkpoint: {error}",
                    stacklevel=2,
                )
                failed.append(step)
        if failed:
            raise CheckpointError(
                f"CheckpointManager.restore: none of the checkpoints in '{self.directory}' can "
                f"be read (steps {failed}); see the warnings for each file."
            )
        return None
