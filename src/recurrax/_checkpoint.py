r"""Training checkpoints that never lose work: one file per checkpoint, written atomically.

A checkpoint holds everything needed to resume training exactly: the model, the optimiser
state, the [`equinox.nn.State`](https://docs.kidger.site/equinox/api/nn/stateful/) of stateful
layers (BatchNorm statistics), the step, the PRNG key, the configuration the model was built
from and free-form metadata.

**File format** (version 1). One file, two parts:

1. A header: one line of UTF-8 JSON (no newline inside), then `\n`. The line starts with
    `{"format":"recurrax-checkpoint"` (the magic), then holds `format_version`,
    `recurrax_version`, `jax_version`, `equinox_version`, `created` (UTC, ISO 8601), `step`,
    `config`, `metadata`, `key` (`null`, or `{"impl": ..., "typed": ...}`), `payload`
    (`{"length": ..., "sha256": ...}`), `parts` and lastly `header_sha256`, the SHA-256 of the
    header without that field written as canonical JSON (sorted keys, no spaces).
    `parts` maps `model`, `opt_state`, `state` and `key` to `null` (not saved) or to
    `{"offset": ..., "length": ..., "leaves": [...]}`: the part's byte range inside the
    payload and, for every leaf saved, its path (`jax.tree_util.keystr`), shape and dtype.
2. The payload: the parts one after the other, each written by
    `equinox.tree_serialise_leaves` (NumPy's `.npy` format per leaf, never pickle). The key
    is stored as `jax.random.key_data(key)` and rebuilt with `jax.random.wrap_key_data`.

Loading follows Equinox: the caller provides skeletons (a freshly initialised model, or one
made by `equinox.filter_eval_shape`, which allocates nothing) and
`equinox.tree_deserialise_leaves` fills them in. Before anything is read into them, the
header's leaf list is compared with the skeletons', so a mismatch names the first differing
leaf.

Writes go to a temporary file in the same directory (`.{name}.tmp-{pid}-{random}`), which is
flushed, `fsync`ed and renamed onto the final name with `os.replace` (atomic), after which the
directory is `fsync`ed. A process killed at any moment leaves either the previous file or the
complete new one under the final name.
"""

import dataclasses
import datetime
import hashlib
import importlib.metadata
import io
import json
import os
import pathlib
import secrets
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray, PyTree


_FORMAT = "recurrax-checkpoint"
_FORMAT_VERSION = 1
_MAGIC = b'{"format":"recurrax-checkpoint"'
_MAX_HEADER_BYTES = 1 << 28
_PARTS = ("model", "opt_state", "state", "key")
_WHAT = {
    "model": "model",
    "opt_state": "optimiser state",
    "state": "layer state (eqx.nn.State)",
    "key": "PRNG key",
}


class CheckpointError(ValueError):
    """A checkpoint file cannot be loaded: it is not a recurrax checkpoint, it is truncated or
    corrupted, it was written in an unsupported format version, or it does not match what the
    caller expects (configuration, skeletons, parts asked for). The message names the file and
    says what is wrong.

    !!! example

        ```python
        import pathlib
        import tempfile

        import jax
        import recurrax

        path = pathlib.Path(tempfile.mkdtemp()) / "not-a-checkpoint.ckpt"
        path.write_text("hello")
        refused = False
        try:
            recurrax.load_checkpoint(path, model=recurrax.LRU(2, 4, key=jax.random.key(0)))
        except recurrax.CheckpointError:                       # the message names the file
            refused = True
        assert refused
        ```
    """


class _UnreadableCheckpoint(CheckpointError):
    """The file itself is bad (as opposed to a mismatch with the caller's expectations); a
    [`recurrax.CheckpointManager`][] falls back to an older checkpoint on these."""


@dataclasses.dataclass(frozen=True, eq=False)
class Checkpoint:
    """What [`recurrax.load_checkpoint`][] returns.

    **Fields:**

    - `model`: the model, the skeleton's structure with the saved leaves.
    - `opt_state`: the optimiser state, or `None` if no skeleton was asked for.
    - `state`: the `equinox.nn.State`, or `None` if no skeleton was asked for.
    - `step`: the training step saved.
    - `key`: the PRNG key saved (a typed key if a typed key was saved), or `None`.
    - `config`: the configuration saved, as JSON gives it back (tuples become lists), or
        `None`.
    - `metadata`: the metadata saved (as JSON gives it back), or `None`.
    - `path`: the file loaded.

    !!! example

        ```python
        import pathlib
        import tempfile

        import jax
        import recurrax

        model = recurrax.LRU(2, 4, key=jax.random.key(0))
        path = pathlib.Path(tempfile.mkdtemp()) / "step-10.ckpt"
        recurrax.save_checkpoint(path, model=model, step=10, config={"state_size": 4})

        restored = recurrax.load_checkpoint(path, model=model)
        assert isinstance(restored, recurrax.Checkpoint)
        print(restored.step, restored.config, restored.opt_state)   # 10 {'state_size': 4} None
        ```
    """

    model: PyTree
    opt_state: PyTree
    state: eqx.nn.State | None
    step: int
    key: PRNGKeyArray | None
    config: dict | None
    metadata: dict | None
    path: pathlib.Path


# -- saving -----------------------------------------------------------------------------------


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: PyTree,
    step: int,
    config: dict | None = None,
    opt_state: PyTree = None,
    state: eqx.nn.State | None = None,
    key: PRNGKeyArray | None = None,
    metadata: dict | None = None,
) -> pathlib.Path:
    """Save a training checkpoint to one file, atomically.

    The file is written under a temporary name in the same directory, flushed to disk and
    renamed onto `path`: at every moment `path` holds either its previous content or the
    complete new checkpoint, even if the process is killed.

    **Arguments:**

    - `path`: the file to write (its directory must exist); an existing file is replaced.
    - `model`: the model, usually an `equinox.Module`. Its array leaves (JAX or NumPy arrays
        of any dtype, bfloat16 and complex included, and Python scalars) are saved; the rest
        (functions, static fields) comes from the skeleton when loading.
    - `step`: the training step, a non-negative integer.
    - `config`: the JSON-serialisable hyper-parameters the model is built from; a resuming
        script reads them back with [`recurrax.read_checkpoint_header`][] to build the
        skeleton.
    - `opt_state`: the optimiser state (an optax state), or `None`.
    - `state`: the `equinox.nn.State` of stateful layers (BatchNorm), or `None`.
    - `key`: the PRNG key of the training loop (a typed `jax.random.key` or a legacy
        `uint32` key), or `None`.
    - `metadata`: free-form JSON-serialisable information (loss, wall time, ...), or `None`.

    **Returns:**

    `path` as a `pathlib.Path`.

    **Raises:**

    - `ValueError` naming the argument for a negative or non-integer `step`, a `config` or
        `metadata` that JSON cannot write, or leaves that cannot be saved (abstract
        `jax.ShapeDtypeStruct`s, tracers, typed keys inside the model).
    - `FileNotFoundError` if the directory of `path` does not exist.
    - `OSError` from the file system; the previous file is then left as it was and the
        temporary file is removed.

    !!! example

        ```python
        import pathlib
        import tempfile

        import jax
        import recurrax

        model = recurrax.LRU(2, 4, key=jax.random.key(0))
        path = pathlib.Path(tempfile.mkdtemp()) / "step-10.ckpt"
        recurrax.save_checkpoint(path, model=model, step=10, config={"state_size": 4})

        print(recurrax.read_checkpoint_header(path)["step"])   # 10
        ```
    """
    path = pathlib.Path(path)
    if model is None:
        raise ValueError("save_checkpoint: `model` must be given, got model=None.")
    step = _check_step("save_checkpoint", step)
    config = _check_json("save_checkpoint", "config", config)
    metadata = _check_json("save_checkpoint", "metadata", metadata)
    if state is not None and not isinstance(state, eqx.nn.State):
        raise ValueError(
            f"save_checkpoint: `state` must be an equinox.nn.State or None, got "
            f"{type(state).__name__}."
        )
    key_info, key_data = _split_key(key)
    trees = {"model": model, "opt_state": opt_state, "state": state, "key": key_data}

    payload = io.BytesIO()
    parts: dict[str, Any] = {}
    for name in _PARTS:
        tree = trees[name]
        if tree is None:
            parts[name] = None
            continue
        leaves = _describe(tree, saving=name)
        offset = payload.tell()
        eqx.tree_serialise_leaves(payload, tree)
        parts[name] = {"offset": offset, "length": payload.tell() - offset, "leaves": leaves}
    data = payload.getbuffer()

    header = {
        "format": _FORMAT,
        "format_version": _FORMAT_VERSION,
        "recurrax_version": _version("recurrax"),
        "jax_version": jax.__version__,
        "equinox_version": _version("equinox"),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "step": step,
        "config": config,
        "metadata": metadata,
        "key": key_info,
        "payload": {"length": len(data), "sha256": hashlib.sha256(data).hexdigest()},
        "parts": parts,
    }
    header["header_sha256"] = _header_digest(header)
    line = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    assert line.startswith(_MAGIC) and b"\n" not in line
    _write_atomically(path, (line, b"\n", data))
    return path


def _check_step(owner: str, step: Any) -> int:
    if isinstance(step, (int, np.integer)) and not isinstance(step, bool) and step >= 0:
        return int(step)
    raise ValueError(f"{owner}: `step` must be a non-negative integer, got step={step!r}.")


def _check_json(owner: str, name: str, value: Any) -> dict | None:
    """`value` as JSON gives it back, or a ValueError naming `name`."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(
            f"{owner}: `{name}` must be a dict (or None), got {type(value).__name__}: "
            f"{name}={value!r}."
        )
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{owner}: `{name}` must be JSON-serialisable (dicts with string keys, lists, "
            f"strings, numbers, booleans, None; convert arrays with float() or .tolist()), "
            f"but {error}: {name}={value!r}."
        ) from None


def _split_key(key: Any) -> tuple[dict | None, Any]:
    """The header's description of `key` and the array to save."""
    if key is None:
        return None, None
    if not isinstance(key, jax.Array):
        raise ValueError(
            f"save_checkpoint: `key` must be a JAX PRNG key or None, got "
            f"{type(key).__name__}: key={key!r}."
        )
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        impl = str(jax.random.key_impl(key))
        return {"impl": impl, "typed": True}, jax.random.key_data(key)
    if key.dtype != jnp.uint32:
        raise ValueError(
            f"save_checkpoint: `key` must be a typed key (jax.random.key) or a legacy uint32 "
            f"key (jax.random.PRNGKey), got dtype {key.dtype}."
        )
    return {"impl": None, "typed": False}, key


def _leaf_shape_dtype(leaf: Any) -> tuple[list[int], str] | None:
    """Shape and dtype of a leaf that `equinox.tree_serialise_leaves` writes (or that
    `equinox.tree_deserialise_leaves` reads into), `None` for a leaf it skips."""
    if isinstance(leaf, (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct)):
        return [int(n) for n in leaf.shape], str(leaf.dtype)
    if isinstance(leaf, (bool, int, float, complex)):
        return [], f"python {type(leaf).__name__}"
    if hasattr(leaf, "__jax_array__"):
        array = jnp.asarray(leaf)
        return [int(n) for n in array.shape], str(array.dtype)
    return None


def _describe(tree: Any, *, saving: str | None = None) -> list[dict]:
    """The leaves written for `tree`, in order: path, shape and dtype. With `saving` (the
    argument's name), reject leaves that cannot be saved."""
    described = []
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        kind = _leaf_shape_dtype(leaf)
        if kind is None:
            continue
        where = jax.tree_util.keystr(key_path)
        if saving is not None:
            _check_savable(saving, where, leaf)
        described.append({"path": where, "shape": kind[0], "dtype": kind[1]})
    return described


def _check_savable(name: str, where: str, leaf: Any) -> None:
    problem = None
    if isinstance(leaf, jax.ShapeDtypeStruct):
        problem = "is abstract (a jax.ShapeDtypeStruct): a skeleton cannot be saved"
    elif isinstance(leaf, jax.core.Tracer):
        problem = "is a tracer: save checkpoints outside jax.jit, jax.grad and jax.vmap"
    elif isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        problem = (
            "is a typed PRNG key, which cannot be written as an array: pass the training key "
            "as `key=` or store jax.random.key_data(key) in the model"
        )
    if problem is not None:
        raise ValueError(f"save_checkpoint: the leaf {name}{where} of `{name}` {problem}.")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a bare checkout
        return "0+unknown"


def _header_digest(header: dict) -> str:
    canonical = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _write_atomically(path: pathlib.Path, chunks: tuple) -> None:
    """Write `chunks` to a temporary file beside `path`, fsync it, rename it onto `path`
    and fsync the directory. The temporary file is removed on any exception."""
    directory = path.parent
    if not directory.is_dir():
        raise FileNotFoundError(
            f"save_checkpoint: the directory '{directory}' of `path` does not exist "
            f"(path='{path}')."
        )
    temporary = directory / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    created = False
    try:
        with open(temporary, "xb") as file:
            created = True
            for chunk in chunks:
                file.write(chunk)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if created:
            try:
                os.unlink(temporary)
            except OSError:
                pass
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: pathlib.Path) -> None:
    """Make the rename durable. Not every OS can open a directory (Windows cannot)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


# -- loading ----------------------------------------------------------------------------------


def read_checkpoint_header(path: str | os.PathLike) -> dict:
    """Read the header of a checkpoint file without reading its payload.

    Cheap whatever the size of the model: it reads the first line and checks the file's
    size. A training script uses it to rebuild the model skeleton from `header["config"]`
    before calling [`recurrax.load_checkpoint`][].

    **Arguments:**

    - `path`: the checkpoint file.

    **Returns:**

    The header as a dict: `"step"`, `"config"`, `"metadata"`, `"recurrax_version"`,
    `"created"`, `"key"`, `"parts"` (the leaves saved, with their paths, shapes and dtypes),
    `"payload"` and the format fields (see the module documentation).

    **Raises:**

    - `FileNotFoundError` if `path` does not exist.
    - [`recurrax.CheckpointError`][] if the file is not a recurrax checkpoint, was written
        in an unsupported format version, or is truncated or corrupted (the header is checked
        against its own SHA-256 and the file's size against the payload's length; the
        payload's SHA-256 is only checked by `load_checkpoint`).

    !!! example

        ```python
        import pathlib
        import tempfile

        import jax
        import recurrax

        model = recurrax.LRU(2, 4, key=jax.random.key(0))
        path = pathlib.Path(tempfile.mkdtemp()) / "step-10.ckpt"
        recurrax.save_checkpoint(path, model=model, step=10, config={"state_size": 4})

        header = recurrax.read_checkpoint_header(path)         # the first line only
        print(header["step"], header["config"])                # 10 {'state_size': 4}
        ```
    """
    path = pathlib.Path(path)
    with open(path, "rb") as file:
        header, _ = _read_header(file, path)
    return header


def _read_header(file: Any, path: pathlib.Path) -> tuple[dict, int]:
    """The validated header and the payload's offset in the file."""
    start = file.read(len(_MAGIC))
    if not start:
        raise _UnreadableCheckpoint(
            f"Checkpoint file '{path}' is empty (0 bytes): it is not a recurrax checkpoint, "
            f"or its writing never started."
        )
    if not _MAGIC.startswith(start):
        raise _UnreadableCheckpoint(
            f"File '{path}' is not a recurrax checkpoint: it does not start with the header "
            f"{_MAGIC.decode()!r} (its first bytes are {start[:16]!r})."
        )
    rest = file.readline(_MAX_HEADER_BYTES)
    if len(start) < len(_MAGIC) or not rest.endswith(b"\n"):
        if len(rest) >= _MAX_HEADER_BYTES:
            raise _UnreadableCheckpoint(
                f"File '{path}' is not a recurrax checkpoint: its header line does not end "
                f"within {_MAX_HEADER_BYTES} bytes."
            )
        raise _UnreadableCheckpoint(
            f"Checkpoint file '{path}' is truncated: it ends after {len(start) + len(rest)} "
            f"bytes, inside its header line."
        )
    line = start + rest[:-1]
    try:
        header = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _UnreadableCheckpoint(
            f"Checkpoint file '{path}' is corrupted: its header line is not valid JSON ({error})."
        ) from None
    if not isinstance(header, dict) or header.get("format") != _FORMAT:
        raise _UnreadableCheckpoint(
            f"File '{path}' is not a recurrax checkpoint: its header does not name the format "
            f"{_FORMAT!r}."
        )
    version = header.get("format_version")
    if version != _FORMAT_VERSION and header.get("header_sha256") != _header_digest(
        {k: v for k, v in header.items() if k != "header_sha256"}
    ):
        raise _UnreadableCheckpoint(
            f"Checkpoint file '{path}' is corrupted: its header does not match the SHA-256 "
            f"recorded in it (it reads format_version={version!r}; this recurrax writes and "
            f"reads format version {_FORMAT_VERSION})."
        )
    if version != _FORMAT_VERSION:
        raise _UnreadableCheckpoint(
            f"Checkpoint file '{path}' was written in format version {version!r} (by recurrax "
            f"{header.get('recurrax_version', 'unknown')}), but this recurrax "
            f"({_version('recurrax')}) reads only format version {_FORMAT_VERSION}; an "
            f"unsupported format version needs a matching recurrax."
        )
    digest = header.pop("header_sha256", None)
    if digest != _header_digest(header):
        raise _UnreadableCheckpoint(
            f"Checkpoint file '{path}' is corrupted: its header does not match the SHA-256 "
            f"recorded in it."
        )
    header["header_sha256"] = digest
    offset = len(line) + 1
    length = header["payload"]["length"]
    size = os.fstat(file.fileno()).st_size
    if size < offset + length:
        raise _UnreadableCheckpoint(
            f"Checkpoint file '{path}' is truncated: its header announces a payload of "
            f"{length} bytes but only {size - offset} follow it."
        )
    if size > offset + length:
        raise _UnreadableCheckpoint(
            f"Checkpoint file '{path}' is corrupted: {size - offset - length} unexpected bytes "
            f"follow its payload of {length} bytes."
        )
    return header, offset


def load_checkpoint(
    path: str | os.PathLike,
    *,
    model: PyTree,
    opt_state: PyTree = None,
    state: eqx.nn.State | None = None,
    config: dict | None = None,
    require_key: bool = False,
) -> Checkpoint:
    """Load a checkpoint written by [`recurrax.save_checkpoint`][] into skeletons.

    The skeletons give the structure and the non-array parts; their array leaves (arrays or
    `jax.ShapeDtypeStruct`s, e.g. from `equinox.filter_eval_shape`) are replaced by the
    saved ones, which must have the same paths, shapes and dtypes.

    **Arguments:**

    - `path`: the checkpoint file.
    - `model`: the model skeleton, e.g. `eqx.filter_eval_shape(make_model, **config,
        key=jax.random.key(0))` with the `config` of [`recurrax.read_checkpoint_header`][].
    - `opt_state`: the optimiser state skeleton (e.g. `optimiser.init(eqx.filter(model,
        eqx.is_inexact_array))`) to load the saved optimiser state, or `None` not to load it.
    - `state`: the `equinox.nn.State` skeleton (from `eqx.nn.make_with_state`) to load the
        saved state, or `None` not to load it.
    - `config`: if given, the configuration the checkpoint must have been saved with.
    - `require_key`: raise unless the checkpoint holds a PRNG key.

    **Returns:**

    A [`recurrax.Checkpoint`][] with the model, the optimiser state and the state (those asked
    for), the step, the key (if one was saved), the configuration and the metadata.

    **Raises:**

    - `FileNotFoundError` if `path` does not exist.
    - [`recurrax.CheckpointError`][] naming the file if it is not a recurrax checkpoint, was
        written in an unsupported format version, is truncated (payload shorter than the
        header says) or corrupted (SHA-256 mismatch); if `config` differs from the saved
        configuration (naming each differing key with both values); if a skeleton's leaves
        differ from the saved ones (naming the first differing leaf with both shapes and
        dtypes); if a skeleton is given for a part that was not saved, or `require_key` is set
        and no key was saved.

    !!! example

        ```python
        import pathlib
        import tempfile

        import jax
        import recurrax

        model = recurrax.LRU(2, 4, key=jax.random.key(0))
        path = pathlib.Path(tempfile.mkdtemp()) / "step-10.ckpt"
        recurrax.save_checkpoint(path, model=model, step=10, config={"state_size": 4})

        skeleton = recurrax.LRU(2, 4, key=jax.random.key(1))   # its values are replaced
        restored = recurrax.load_checkpoint(path, model=skeleton)
        assert restored.step == 10 and bool((restored.model.nu_log == model.nu_log).all())
        ```
    """
    path = pathlib.Path(path)
    with open(path, "rb") as file:
        header, offset = _read_header(file, path)
        _check_config(path, header.get("config"), config)
        parts = header["parts"]
        wanted = {"model": model, "opt_state": opt_state, "state": state}
        for name, skeleton in wanted.items():
            if skeleton is not None and parts.get(name) is None:
                raise CheckpointError(
                    f"Checkpoint file '{path}' holds no {_WHAT[name]} (it was saved with "
                    f"{name}=None), but a `{name}` skeleton was given to load it into."
                )
        if require_key and parts.get("key") is None:
            raise CheckpointError(
                f"Checkpoint file '{path}' holds no PRNG key (it was saved with key=None), but "
                f"require_key=True."
            )
        for name, skeleton in wanted.items():
            if skeleton is not None:
                _check_leaves(path, name, parts[name]["leaves"], _describe(skeleton))
        length = header["payload"]["length"]
        file.seek(offset)
        data = file.read(length)
    if len(data) != length:
        raise _UnreadableCheckpoint(
            f"Checkpoint file '{path}' is truncated: its header announces a payload of "
            f"{length} bytes but only {len(data)} could be read."
        )
    if hashlib.sha256(data).hexdigest() != header["payload"]["sha256"]:
        raise _UnreadableCheckpoint(
            f"Checkpoint file '{path}' is corrupted: the SHA-256 of its payload does not match "
            f"the one recorded in its header."
        )

    loaded = {
        name: None if skeleton is None else _deserialise(path, data, name, parts[name], skeleton)
        for name, skeleton in wanted.items()
    }
    return Checkpoint(
        model=loaded["model"],
        opt_state=loaded["opt_state"],
        state=loaded["state"],
        step=int(header["step"]),
        key=_load_key(path, data, header),
        config=header.get("config"),
        metadata=header.get("metadata"),
        path=path,
    )


def _deserialise(path: pathlib.Path, data: bytes, name: str, part: dict, skeleton: Any) -> Any:
    start, length = part["offset"], part["length"]
    buffer = io.BytesIO(data[start : start + length])
    try:
        out = eqx.tree_deserialise_leaves(buffer, skeleton)
    except (ValueError, RuntimeError, OSError, EOFError) as error:
        raise CheckpointError(
            f"Checkpoint file '{path}': its {_WHAT[name]} cannot be read into the `{name}` "
            f"skeleton: {error}"
        ) from error
    if buffer.tell() != length:
        raise _UnreadableCheckpoint(
            f"Checkpoint file '{path}' is corrupted: its {_WHAT[name]} takes "
            f"{buffer.tell()} bytes where its header announces {length}."
        )
    return out


def _load_key(path: pathlib.Path, data: bytes, header: dict) -> Any:
    part = header["parts"].get("key")
    if part is None:
        return None
    (leaf,) = part["leaves"]
    skeleton = jax.ShapeDtypeStruct(tuple(leaf["shape"]), np.dtype(leaf["dtype"]))
    key_data = _deserialise(path, data, "key", part, skeleton)
    info = header.get("key") or {}
    if not info.get("typed", False):
        return key_data
    try:
        return jax.random.wrap_key_data(key_data, impl=info["impl"])
    except (ValueError, TypeError, KeyError) as error:
        raise CheckpointError(
            f"Checkpoint file '{path}' holds a PRNG key of implementation "
            f"{info.get('impl')!r}, which this JAX ({jax.__version__}) cannot rebuild: {error}"
        ) from None


def _check_config(path: pathlib.Path, saved: Any, expected: dict | None) -> None:
    if expected is None:
        return
    expected = _check_json("load_checkpoint", "config", expected)
    if saved is None:
        raise CheckpointError(
            f"Checkpoint file '{path}' was saved without a configuration, but `config` was "
            f"given: config={json.dumps(expected)}."
        )
    differences = _config_differences(saved, expected, "")
    if differences:
        raise CheckpointError(
            f"Checkpoint file '{path}' was saved with a different configuration from the "
            f"expected `config`: {'; '.join(differences)}."
        )


def _config_differences(saved: Any, expected: Any, where: str) -> list[str]:
    if isinstance(saved, dict) and isinstance(expected, dict):
        differences = []
        for name in list(saved) + [k for k in expected if k not in saved]:
            at = f"{where}.{name}" if where else name
            if name not in expected:
                differences.append(
                    f"{at!r} is {json.dumps(saved[name])} in the file but missing from `config`"
                )
            elif name not in saved:
                differences.append(
                    f"{at!r} is missing from the file but {json.dumps(expected[name])} in `config`"
                )
            else:
                differences += _config_differences(saved[name], expected[name], at)
        return differences
    if json.dumps(saved, sort_keys=True) == json.dumps(expected, sort_keys=True):
        return []
    return [f"{where!r} is {json.dumps(saved)} in the file but {json.dumps(expected)} in `config`"]


def _check_leaves(path: pathlib.Path, name: str, saved: list, expected: list) -> None:
    def show(leaf: dict) -> str:
        return f"shape {tuple(leaf['shape'])} and dtype {leaf['dtype']}"

    hint = (
        " Build the skeleton from the checkpoint's configuration "
        "(read_checkpoint_header(path)['config'])."
    )
    for old, new in zip(saved, expected):
        if old != new:
            if old["path"] != new["path"]:
                problem = (
                    f"the file holds the leaf {name}{old['path']} ({show(old)}) where the "
                    f"skeleton has {name}{new['path']} ({show(new)})"
                )
            else:
                problem = (
                    f"the leaf {name}{old['path']} has {show(old)} in the file but {show(new)} "
                    f"in the skeleton"
                )
            raise CheckpointError(
                f"Checkpoint file '{path}' does not match the `{name}` skeleton: {problem}." + hint
            )
    if len(saved) != len(expected):
        longer, where = (saved, "the file") if len(saved) > len(expected) else (expected, "")
        extra = longer[min(len(saved), len(expected))]
        where = where or "the skeleton"
        raise CheckpointError(
            f"Checkpoint file '{path}' does not match the `{name}` skeleton: the file holds "
            f"{len(saved)} leaves and the skeleton {len(expected)}; the first one only in "
            f"{where} is {name}{extra['path']} ({show(extra)})." + hint
        )


# -- several checkpoints ----------------------------------------------------------------------
