"""Checkpoints: exact round trips, atomic writes under SIGKILL and exceptions, clear errors for
corrupt and mismatched files, and the manager that keeps the last few."""

import inspect
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import optax
import pytest

import recurrax
import recurrax._checkpoint as checkpoint_module
from recurrax import (
    Checkpoint,
    CheckpointError,
    CheckpointManager,
    load_checkpoint,
    read_checkpoint_header,
    save_checkpoint,
)
from recurrax._checkpoint import _check_step


CONFIG = {"input_size": 3, "hidden_size": 8, "state_size": 6}
OPTIMISER = optax.adamw(1e-3)


# Equinox >= 0.11.11 asks for the mode (and warns without it); earlier ones have only EMA.
_EMA = {"mode": "ema"} if "mode" in inspect.signature(eqx.nn.BatchNorm).parameters else {}


class Net(eqx.Module):
    """Linear -> BatchNorm -> LRU -> MinGRU, on one sequence `(length, input)`."""

    encoder: eqx.nn.Linear
    norm: eqx.nn.BatchNorm
    lru: recurrax.LRU
    gru: recurrax.MinGRU

    def __init__(self, input_size, hidden_size, state_size, *, key):
        k_encoder, k_lru, k_gru = jax.random.split(key, 3)
        self.encoder = eqx.nn.Linear(input_size, hidden_size, key=k_encoder)
        self.norm = eqx.nn.BatchNorm(hidden_size, axis_name="batch", **_EMA)
        self.lru = recurrax.LRU(hidden_size, state_size, key=k_lru)
        self.gru = recurrax.MinGRU(hidden_size, hidden_size, key=k_gru)

    def __call__(self, x, state):
        h = jax.vmap(self.encoder)(x)
        h, state = self.norm(h.T, state)
        return self.gru(self.lru(h.T)), state


def make(config, key):
    """Model, layer state and optimiser state, as a training script initialises them."""
    model, state = eqx.nn.make_with_state(Net)(**config, key=key)
    return model, state, OPTIMISER.init(eqx.filter(model, eqx.is_inexact_array))


def skeletons(config, how):
    if how == "eval_shape":
        return eqx.filter_eval_shape(make, config, jax.random.key(0))
    return make(config, jax.random.key(12345))  # fresh values: only the file can match


@eqx.filter_jit
def train_step(model, state, opt_state, x):
    def loss(model, state):
        batched = jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))
        y, state = batched(x, state)
        return jnp.mean(y**2), state

    (_, state), grads = eqx.filter_value_and_grad(loss, has_aux=True)(model, state)
    params = eqx.filter(model, eqx.is_inexact_array)
    with jax.numpy_dtype_promotion("standard"):  # optax is not strict-promotion clean
        updates, opt_state = OPTIMISER.update(grads, opt_state, params)
    return eqx.apply_updates(model, updates), state, opt_state


@pytest.fixture(scope="module")
def trained():
    """After three real updates: the Adam moments and the BatchNorm statistics are nonzero."""
    model, state, opt_state = make(CONFIG, jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (4, 10, CONFIG["input_size"]))
    for _ in range(3):
        model, state, opt_state = train_step(model, state, opt_state, x)
    return model, state, opt_state


def same(x, y) -> bool:
    """Same structure, static fields, shapes, dtypes and exactly the same values."""
    return bool(eqx.tree_equal(x, y))


def flip_byte(path, position, mask=0x40):
    data = bytearray(path.read_bytes())
    data[position] ^= mask
    path.write_bytes(bytes(data))


def header_length(path) -> int:
    """Bytes of the header line, newline included."""
    return path.read_bytes().index(b"\n") + 1


def other_files(directory, name):
    return sorted(p for p in os.listdir(directory) if p != name)


# -- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["eval_shape", "fresh"])
def test_round_trip_everything(trained, tmp_path, how):
    model, state, opt_state = trained
    assert np.any(np.asarray(jax.tree_util.tree_leaves(opt_state)[1]) != 0)  # moments moved
    key = jax.random.key(7)
    metadata = {"loss": 0.25, "note": "after warm-up", "history": [1, 2.5, None]}
    path = save_checkpoint(
        tmp_path / "run.rcx",
        model=model,
        step=1234,
        config=CONFIG,
        opt_state=opt_state,
        state=state,
        key=key,
        metadata=metadata,
    )
    assert path == tmp_path / "run.rcx"
    assert os.listdir(tmp_path) == ["run.rcx"]  # no temporary file left

    model_like, state_like, opt_like = skeletons(CONFIG, how)
    loaded = load_checkpoint(
        path, model=model_like, opt_state=opt_like, state=state_like, config=CONFIG
    )
    assert isinstance(loaded, Checkpoint)
    assert same(loaded.model, model)
    assert same(loaded.opt_state, opt_state)
    assert same(jax.tree_util.tree_leaves(loaded.state), jax.tree_util.tree_leaves(state))
    assert loaded.step == 1234 and isinstance(loaded.step, int)
    assert loaded.config == CONFIG and loaded.metadata == metadata
    assert loaded.path == path
    assert jax.random.key_impl(loaded.key) == jax.random.key_impl(key)
    np.testing.assert_array_equal(jax.random.key_data(loaded.key), jax.random.key_data(key))
    np.testing.assert_array_equal(jax.random.normal(loaded.key, (5,)), jax.random.normal(key, (5,)))

    # The restored model, state and optimiser state train on exactly as the originals.
    x = jax.random.normal(jax.random.key(2), (4, 10, CONFIG["input_size"]))
    expected = train_step(model, state, opt_state, x)
    resumed = train_step(loaded.model, loaded.state, loaded.opt_state, x)
    assert same(jax.tree_util.tree_leaves(resumed), jax.tree_util.tree_leaves(expected))


def test_loads_only_the_parts_asked_for(trained, tmp_path):
    model, state, opt_state = trained
    path = save_checkpoint(
        tmp_path / "c.rcx", model=model, step=5, opt_state=opt_state, state=state
    )
    model_like, _, _ = skeletons(CONFIG, "eval_shape")
    loaded = load_checkpoint(path, model=model_like)
    assert same(loaded.model, model)
    assert loaded.opt_state is None and loaded.state is None and loaded.key is None
    assert loaded.config is None and loaded.metadata is None


class Mixed(eqx.Module):
    f32: jax.Array
    f64: jax.Array
    bf16: jax.Array
    c64: jax.Array
    c128: jax.Array
    i32: jax.Array
    flags: jax.Array
    numpy_table: np.ndarray
    scale: float
    count: int
    name: str = eqx.field(static=True)

    def __init__(self, key, name="mixed"):
        k = jax.random.split(key, 6)
        self.f32 = jax.random.normal(k[0], (3, 4), jnp.float32)
        self.f64 = jax.random.normal(k[1], (5,), jnp.float64)
        self.bf16 = jax.random.normal(k[2], (2, 3), jnp.float32).astype(jnp.bfloat16)
        self.c64 = jax.random.normal(k[3], (4,), jnp.complex64)
        self.c128 = jax.random.normal(k[4], (2, 2), jnp.complex128)
        self.i32 = jax.random.randint(k[5], (6,), -100, 100, jnp.int32)
        self.flags = jnp.arange(4) % 2 == 0
        self.numpy_table = np.linspace(0.0, 1.0, 7, dtype=np.float32)
        self.scale = 0.125
        self.count = 3
        self.name = name


@pytest.mark.parametrize("how", ["eval_shape", "fresh"])
def test_round_trip_every_dtype(tmp_path, how):
    model = Mixed(jax.random.key(0))
    path = save_checkpoint(tmp_path / "m.rcx", model=model, step=0)
    if how == "eval_shape":
        like = eqx.filter_eval_shape(Mixed, jax.random.key(1))
    else:
        like = eqx.tree_at(lambda m: (m.scale, m.count), Mixed(jax.random.key(1)), (9.0, 9))
    loaded = load_checkpoint(path, model=like).model
    for name in ["f32", "f64", "bf16", "c64", "c128", "i32", "flags", "numpy_table"]:
        got, want = getattr(loaded, name), getattr(model, name)
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=name)
    assert loaded.scale == 0.125 and loaded.count == 3 and type(loaded.count) is int
    dtypes = {
        leaf["path"]: leaf["dtype"]
        for leaf in read_checkpoint_header(path)["parts"]["model"]["leaves"]
    }
    assert dtypes[".bf16"] == "bfloat16" and dtypes[".c128"] == "complex128"
    assert dtypes[".scale"] == "python float" and dtypes[".count"] == "python int"


@pytest.mark.parametrize(
    "make_key",
    [
        lambda: jax.random.key(3),
        lambda: jax.random.key(3, impl="rbg"),
        lambda: jax.random.PRNGKey(3),  # legacy uint32 key
        lambda: None,
    ],
    ids=["threefry", "rbg", "legacy", "none"],
)
def test_key_round_trip(tmp_path, make_key):
    key = make_key()
    model = eqx.nn.Linear(2, 2, key=jax.random.key(0))
    path = save_checkpoint(tmp_path / "k.rcx", model=model, step=1, key=key)
    loaded = load_checkpoint(path, model=model).key
    if key is None:
        assert loaded is None
        with pytest.raises(CheckpointError, match="holds no PRNG key"):
            load_checkpoint(path, model=model, require_key=True)
        return
    assert loaded.dtype == key.dtype and loaded.shape == key.shape
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        assert jax.random.key_impl(loaded) == jax.random.key_impl(key)
    np.testing.assert_array_equal(jax.random.uniform(loaded, (8,)), jax.random.uniform(key, (8,)))
    assert load_checkpoint(path, model=model, require_key=True).key is not None


def test_header(trained, tmp_path):
    model, state, opt_state = trained
    path = save_checkpoint(
        tmp_path / "h.rcx",
        model=model,
        step=42,
        config=CONFIG,
        opt_state=opt_state,
        key=jax.random.key(0),
        metadata={"loss": 1.5},
    )
    header = read_checkpoint_header(path)
    assert header["format"] == "recurrax-checkpoint" and header["format_version"] == 1
    assert header["recurrax_version"] == recurrax.__version__
    assert header["step"] == 42 and header["config"] == CONFIG
    assert header["metadata"] == {"loss": 1.5}
    assert header["key"] == {"impl": "threefry2x32", "typed": True}
    assert header["parts"]["state"] is None
    flat = jax.tree_util.tree_flatten_with_path(model)[0]
    leaves = header["parts"]["model"]["leaves"]
    arrays = [(jax.tree_util.keystr(p), x) for p, x in flat if isinstance(x, jax.Array)]
    for path_string, array in arrays:
        (entry,) = [leaf for leaf in leaves if leaf["path"] == path_string]
        assert entry["shape"] == list(array.shape) and entry["dtype"] == str(array.dtype)
    assert ".lru.B_re" in {leaf["path"] for leaf in leaves}
    opt_paths = {leaf["path"] for leaf in header["parts"]["opt_state"]["leaves"]}
    assert "[0].mu.lru.B_re" in opt_paths
    size = path.stat().st_size
    assert header["payload"]["length"] == size - header_length(path)

    # The header is all a resuming script needs to rebuild the skeleton; it does not read
    # the payload, so a damaged payload goes unnoticed here (load_checkpoint catches it).
    flip_byte(path, size - 10)
    assert read_checkpoint_header(path)["config"] == CONFIG
    model_like, _, _ = skeletons(read_checkpoint_header(path)["config"], "eval_shape")
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(path, model=model_like)


# -- atomic writes ------------------------------------------------------------------------------

_WRITER = """
import sys

import jax.numpy as jnp

from recurrax import save_checkpoint

path = sys.argv[1]
big = jnp.zeros((6_000_000,), jnp.float32)  # 24 MB: a write takes a while


def model(step):
    return {"weights": big + step, "step": jnp.asarray(step, jnp.int32)}


save_checkpoint(path, model=model(0), step=0, config={"size": 6_000_000})
print("ready", flush=True)
step = 0
while True:
    step += 1
    save_checkpoint(path, model=model(step), step=step, config={"size": 6_000_000})
"""


def _listing(directory):
    """Names, sizes and modification times of the files in `directory`."""
    while True:
        try:
            return {(e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(directory)}
        except FileNotFoundError:  # renamed between the listing and the stat
            continue


def _wait_for_disk_activity(directory, timeout=5.0):
    """Until a file in `directory` appears, disappears or changes: a write has started."""
    before = _listing(directory)
    deadline = time.monotonic() + timeout
    while _listing(directory) == before and time.monotonic() < deadline:
        time.sleep(0.0002)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_during_save_never_leaves_a_partial_file(tmp_path):
    # Six writers at once, each saving 24 MB checkpoints in a loop after a first one. Half
    # are killed at random moments; the other half a random few milliseconds after their
    # directory shows a write starting, so that kills land inside the write phase.
    rng = random.Random(0)
    schedule = [("at", rng.uniform(0.0, 1.0)) for _ in range(3)]
    schedule += [("during-write", rng.uniform(0.0, 0.01)) for _ in range(3)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    paths = [tmp_path / f"run{i}" / "ckpt.rcx" for i in range(len(schedule))]
    writers = []
    try:
        for path in paths:
            path.parent.mkdir()
            writers.append(
                subprocess.Popen(
                    [sys.executable, "-c", _WRITER, str(path)],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env=env,
                )
            )
        for writer in writers:
            line = writer.stdout.readline()
            assert line == b"ready\n", writer.stderr.read().decode()
        start = time.monotonic()
        for writer, path, (how, delay) in zip(writers, paths, schedule):
            if how == "at":
                time.sleep(max(0.0, start + delay - time.monotonic()))
            else:
                _wait_for_disk_activity(path.parent)
                time.sleep(delay)
            writer.send_signal(signal.SIGKILL)
        for writer in writers:
            writer.wait(timeout=30)
            assert writer.returncode == -signal.SIGKILL
    finally:
        for writer in writers:
            if writer.poll() is None:
                writer.kill()
                writer.wait()
            writer.stdout.close()
            writer.stderr.close()

    like = {
        "weights": jax.ShapeDtypeStruct((6_000_000,), jnp.float32),
        "step": jax.ShapeDtypeStruct((), jnp.int32),
    }
    for path in paths:
        # Either the first checkpoint or a complete later one, never a partial one.
        loaded = load_checkpoint(path, model=like, config={"size": 6_000_000})
        assert int(loaded.model["step"]) == loaded.step
        weights = np.asarray(loaded.model["weights"])
        assert weights[0] == loaded.step and np.all(weights == weights[0])
        # What a kill can leave behind is a hidden temporary file, never one under the name.
        for name in other_files(path.parent, "ckpt.rcx"):
            assert name.startswith(".ckpt.rcx.tmp-"), name


def _serialise_then_fail(real):
    calls = []

    def serialise(file, tree, *args, **kwargs):
        calls.append(tree)
        if len(calls) == 2:  # the model went through; fail halfway through the optimiser state
            file.write(b"\x93NUMPY partial")
            raise RuntimeError("simulated failure while serialising")
        return real(file, tree, *args, **kwargs)

    return serialise


@pytest.mark.parametrize("failing", ["serialise", "fsync", "replace", "interrupt"])
def test_exception_during_save_keeps_previous_file(trained, tmp_path, monkeypatch, failing):
    model, state, opt_state = trained
    path = save_checkpoint(tmp_path / "c.rcx", model=model, step=1, opt_state=opt_state)
    before = path.read_bytes()
    error = {"serialise": RuntimeError, "fsync": OSError, "replace": OSError}.get(
        failing, KeyboardInterrupt
    )

    def fail(*args, **kwargs):
        raise error("simulated failure")

    if failing == "serialise":
        monkeypatch.setattr(
            eqx, "tree_serialise_leaves", _serialise_then_fail(eqx.tree_serialise_leaves)
        )
    elif failing == "fsync":
        monkeypatch.setattr(os, "fsync", fail)
    elif failing == "replace":
        monkeypatch.setattr(os, "replace", fail)
    else:  # Ctrl-C in the middle of writing the file
        real_open = open

        class Interrupted:
            def __init__(self, *args):
                self.file = real_open(*args)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.file.close()

            def write(self, chunk):
                self.file.write(bytes(chunk)[: len(chunk) // 2])
                raise KeyboardInterrupt

        monkeypatch.setattr(checkpoint_module, "open", Interrupted, raising=False)
    with pytest.raises(error, match="simulated|^$"):
        save_checkpoint(path, model=model, step=2, opt_state=opt_state)
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["c.rcx"]  # the temporary file was removed
    model_like, _, opt_like = skeletons(CONFIG, "eval_shape")
    assert load_checkpoint(path, model=model_like, opt_state=opt_like).step == 1


# -- corrupt files ------------------------------------------------------------------------------


@pytest.fixture
def small_checkpoint(tmp_path):
    model = recurrax.LRU(3, 4, key=jax.random.key(0))
    path = save_checkpoint(tmp_path / "s.rcx", model=model, step=3, config={"a": 1})
    return path, model


def test_truncated_files_are_rejected(small_checkpoint):
    path, model = small_checkpoint
    data = path.read_bytes()
    head = header_length(path)
    cuts = [1, 10, 40, head // 2, head - 1, head, head + 1, (head + len(data)) // 2, len(data) - 1]
    for cut in cuts:
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=f"{re.escape(str(path))}' is truncated") as info:
            load_checkpoint(path, model=model)
        assert "truncated" in str(info.value), cut
        with pytest.raises(CheckpointError, match="truncated"):
            read_checkpoint_header(path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=f"{re.escape(str(path))}' is empty"):
        load_checkpoint(path, model=model)
    path.write_bytes(data + b"extra")
    with pytest.raises(CheckpointError, match="corrupted: 5 unexpected bytes"):
        load_checkpoint(path, model=model)


def test_flipped_bytes_are_rejected(small_checkpoint):
    path, model = small_checkpoint
    data = path.read_bytes()
    head = header_length(path)
    for position in [head, head + 1, (head + len(data)) // 2, len(data) - 1]:
        path.write_bytes(data)
        flip_byte(path, position)
        with pytest.raises(CheckpointError, match="corrupted: the SHA-256 of its payload"):
            load_checkpoint(path, model=model)
    # Inside the header: a changed value fails the header's own checksum, a broken structure
    # its JSON.
    step_digit = data.index(b'"step":3') + len(b'"step":')
    for position, mask, words in [
        (step_digit, 0x01, "its header does not match the SHA-256"),  # "step":2, valid JSON
        (head - 2, 0x40, "its header line is not valid JSON"),
    ]:
        path.write_bytes(data)
        flip_byte(path, position, mask)
        with pytest.raises(CheckpointError, match=f"{re.escape(str(path))}' is corrupted: {words}"):
            load_checkpoint(path, model=model)
    path.write_bytes(data)
    assert load_checkpoint(path, model=model).step == 3


@pytest.mark.parametrize(
    "content",
    [
        b"hello world\n" + bytes(range(256)),
        b'{"format":"something-else","format_version":1}\n',
        b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00.",  # a pickle
        bytes(range(256)) * 4,
    ],
    ids=["text", "other-json", "pickle", "binary"],
)
def test_other_files_are_not_checkpoints(tmp_path, content):
    path = tmp_path / "x.rcx"
    path.write_bytes(content)
    with pytest.raises(
        CheckpointError, match=f"{re.escape(str(path))}' is not a recurrax checkpoint"
    ):
        read_checkpoint_header(path)


def test_garbage_after_the_magic_is_not_json(tmp_path):
    path = tmp_path / "x.rcx"
    path.write_bytes(b'{"format":"recurrax-checkpoint", garbage\n')
    with pytest.raises(CheckpointError, match="corrupted: its header line is not valid JSON"):
        read_checkpoint_header(path)


def test_unsupported_format_version(small_checkpoint):
    path, model = small_checkpoint
    data = path.read_bytes()
    head = header_length(path)
    header = json.loads(data[: head - 1])
    # Only the version changed: the header's digest no longer matches, so it is damage.
    header["format_version"] = 2
    line = json.dumps(header, separators=(",", ":")).encode()
    path.write_bytes(line + b"\n" + data[head:])
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(path, model=model)
    # A file genuinely written in another format (its digest matches) is named as such.
    from recurrax._checkpoint import _header_digest

    header.pop("header_sha256")
    header["header_sha256"] = _header_digest(header)
    line = json.dumps(header, separators=(",", ":")).encode()
    path.write_bytes(line + b"\n" + data[head:])
    with pytest.raises(CheckpointError, match="format version 2 .* reads only format version 1"):
        load_checkpoint(path, model=model)


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.rcx"
    model = eqx.nn.Linear(2, 2, key=jax.random.key(0))
    with pytest.raises(FileNotFoundError, match="nowhere.rcx"):
        load_checkpoint(path, model=model)
    with pytest.raises(FileNotFoundError, match="nowhere.rcx"):
        read_checkpoint_header(path)


# -- mismatches ---------------------------------------------------------------------------------


def test_config_mismatch_names_the_keys(trained, tmp_path):
    model, state, _ = trained
    path = save_checkpoint(tmp_path / "c.rcx", model=model, step=1, config=CONFIG, state=state)
    like, _, _ = skeletons(CONFIG, "eval_shape")
    wrong = {**CONFIG, "hidden_size": 16, "depth": 2}
    with pytest.raises(CheckpointError, match="different configuration") as info:
        load_checkpoint(path, model=like, config=wrong)
    message = str(info.value)
    assert str(path) in message
    assert "'hidden_size' is 8 in the file but 16 in `config`" in message
    assert "'depth' is missing from the file but 2 in `config`" in message
    assert "input_size" not in message
    # Tuples and lists are the same to JSON: no false alarm.
    assert load_checkpoint(path, model=like, config=dict(CONFIG)).step == 1

    nested = tmp_path / "n.rcx"
    save_checkpoint(
        nested, model=model, step=1, config={"optim": {"lr": 1e-3, "betas": (0.9, 0.99)}}
    )
    assert load_checkpoint(nested, model=like, config={"optim": {"lr": 1e-3, "betas": [0.9, 0.99]}})
    with pytest.raises(CheckpointError, match=r"'optim.lr' is 0.001 in the file but 0.01"):
        load_checkpoint(nested, model=like, config={"optim": {"lr": 1e-2, "betas": [0.9, 0.99]}})
    bare = save_checkpoint(tmp_path / "b.rcx", model=model, step=1)
    with pytest.raises(CheckpointError, match="saved without a configuration"):
        load_checkpoint(bare, model=like, config=CONFIG)


def test_skeleton_mismatch_names_the_leaf(trained, tmp_path):
    model, state, opt_state = trained
    path = save_checkpoint(
        tmp_path / "c.rcx", model=model, step=1, opt_state=opt_state, state=state
    )
    bigger = {**CONFIG, "hidden_size": 16}
    like, state_like, opt_like = skeletons(bigger, "eval_shape")
    pattern = (
        r"does not match the `model` skeleton: the leaf model\.encoder\.weight has shape "
        r"\(8, 3\) and dtype float64 in the file but shape \(16, 3\) and dtype float64"
    )
    with pytest.raises(CheckpointError, match=pattern):
        load_checkpoint(path, model=like)
    good_like, _, _ = skeletons(CONFIG, "eval_shape")
    with pytest.raises(CheckpointError, match=r"`opt_state` skeleton: the leaf opt_state\[0\]"):
        load_checkpoint(path, model=good_like, opt_state=opt_like)
    with pytest.raises(CheckpointError, match="`state` skeleton"):
        load_checkpoint(path, model=good_like, state=state_like)

    # float32 where float64 was saved: the dtype is named.
    as32 = jax.tree_util.tree_map(
        lambda x: (
            jax.ShapeDtypeStruct(x.shape, jnp.float32)
            if isinstance(x, jax.ShapeDtypeStruct) and x.dtype == jnp.float64
            else x
        ),
        good_like,
    )
    with pytest.raises(CheckpointError, match="dtype float64 in the file but .* dtype float32"):
        load_checkpoint(path, model=as32)

    # A different structure: another kind of model with more leaves.
    other = eqx.filter_eval_shape(eqx.nn.MLP, 3, 3, 8, 2, key=jax.random.key(0))
    with pytest.raises(CheckpointError, match="model.layers"):
        load_checkpoint(path, model=other)

    # A leaf fewer: the first one only in the file is named.
    linear = save_checkpoint(
        tmp_path / "l.rcx", model=eqx.nn.Linear(2, 3, key=jax.random.key(0)), step=0
    )
    no_bias = eqx.filter_eval_shape(eqx.nn.Linear, 2, 3, use_bias=False, key=jax.random.key(0))
    pattern = (
        r"the file holds 2 leaves and the skeleton 1; the first one only in the file is "
        r"model\.bias \(shape \(3,\)"
    )
    with pytest.raises(CheckpointError, match=pattern):
        load_checkpoint(linear, model=no_bias)


def test_parts_that_were_not_saved(trained, tmp_path):
    model, state, opt_state = trained
    path = save_checkpoint(tmp_path / "c.rcx", model=model, step=1)
    like, state_like, opt_like = skeletons(CONFIG, "eval_shape")
    with pytest.raises(CheckpointError, match=f"{re.escape(str(path))}' holds no optimiser state"):
        load_checkpoint(path, model=like, opt_state=opt_like)
    with pytest.raises(CheckpointError, match="holds no layer state"):
        load_checkpoint(path, model=like, state=state_like)
    with pytest.raises(CheckpointError, match="holds no PRNG key"):
        load_checkpoint(path, model=like, require_key=True)


# -- bad arguments ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"model": None}, ["`model`", "model=None"]),
        ({"step": -1}, ["`step`", "step=-1"]),
        ({"step": True}, ["`step`", "step=True"]),
        ({"step": 1.5}, ["`step`", "step=1.5"]),
        ({"step": "10"}, ["`step`", "step='10'"]),
        ({"config": {"f": object()}}, ["`config`", "JSON"]),
        ({"config": {"lr": np.float32(1e-3)}}, ["`config`", "float32"]),
        ({"config": {(1, 2): "tuple key"}}, ["`config`", "JSON"]),
        ({"metadata": {"loss": jnp.ones(())}}, ["`metadata`", "JSON"]),
        ({"key": jnp.zeros(2, jnp.int32)}, ["`key`", "int32"]),
        ({"state": "state"}, ["`state`"]),
    ],
)
def test_bad_arguments(tmp_path, kwargs, words):
    model = eqx.nn.Linear(2, 2, key=jax.random.key(0))
    arguments = {"model": model, "step": 0, **kwargs}
    # With the test run's runtime type checks a wrong type is caught by the annotation, which
    # names the parameter too; users get recurrax's own ValueError.
    with pytest.raises((ValueError, jaxtyping.TypeCheckError)) as info:
        save_checkpoint(tmp_path / "c.rcx", **arguments)
    message = str(info.value)
    if isinstance(info.value, jaxtyping.TypeCheckError):
        assert f"parameter '{words[0].strip('`')}'" in message, message
    else:
        for word in words:
            assert word in message, (word, message)
    assert not os.listdir(tmp_path)


def test_own_step_validation_without_runtime_checks():
    with pytest.raises(ValueError, match=r"save_checkpoint: `step` must be a non-negative .*1\.5"):
        _check_step("save_checkpoint", 1.5)
    assert _check_step("save_checkpoint", np.int64(7)) == 7


def test_abstract_or_traced_leaves_cannot_be_saved(tmp_path):
    like = eqx.filter_eval_shape(eqx.nn.Linear, 2, 2, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"model\.weight of `model` is abstract"):
        save_checkpoint(tmp_path / "c.rcx", model=like, step=0)

    @jax.jit
    def inside(x):
        save_checkpoint(tmp_path / "c.rcx", model={"x": x}, step=0)
        return x

    with pytest.raises(ValueError, match="tracer"):
        inside(jnp.ones(2))
    with pytest.raises(ValueError, match="typed PRNG key"):
        save_checkpoint(tmp_path / "c.rcx", model={"k": jax.random.key(0)}, step=0)
    with pytest.raises(FileNotFoundError, match="directory .* does not exist"):
        save_checkpoint(tmp_path / "missing" / "c.rcx", model={"x": jnp.ones(2)}, step=0)
    assert not os.listdir(tmp_path)


# -- CheckpointManager --------------------------------------------------------------------------


def test_manager_keeps_the_newest(tmp_path):
    manager = CheckpointManager(tmp_path / "run", keep=2)
    assert manager.all_steps() == [] and manager.latest() is None
    model = eqx.nn.Linear(2, 2, key=jax.random.key(0))
    for step in [1, 2, 3, 10]:
        written = manager.save(step, model=model, metadata={"step": step})
        assert written == tmp_path / "run" / f"checkpoint-{step:08d}.rcx"
    assert manager.all_steps() == [3, 10]
    assert sorted(os.listdir(tmp_path / "run")) == [
        "checkpoint-00000003.rcx",
        "checkpoint-00000010.rcx",
    ]
    assert manager.latest() == tmp_path / "run" / "checkpoint-00000010.rcx"
    assert manager.restore(model=model).metadata == {"step": 10}


def test_manager_steps_are_numeric(tmp_path):
    manager = CheckpointManager(tmp_path, keep=10, prefix="lru")
    model = {"x": jnp.ones(2)}
    # Nine digits sort before eight as text ("100000000" < "99999999"), not as numbers.
    for step in [0, 9, 10, 99_999_999, 100_000_000]:
        manager.save(step, model=model)
    for name in ["lru-notes.txt", "lru-5.rcx", "other-00000050.rcx", "lru-00000007.rcx.bak"]:
        (tmp_path / name).write_text("not mine")
    assert manager.all_steps() == [0, 9, 10, 99_999_999, 100_000_000]
    assert manager.latest().name == "lru-100000000.rcx"


def test_manager_skips_a_corrupt_newest(tmp_path):
    manager = CheckpointManager(tmp_path, keep=3)
    model = eqx.nn.Linear(2, 2, key=jax.random.key(0))
    for step in [1, 2, 3]:
        manager.save(step, model=model, metadata={"step": step})

    # Truncated newest (a copy that stopped short): the header check sees it.
    newest = manager.path(3)
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) - 7])
    with pytest.warns(UserWarning, match="skipping step 3: .* is truncated"):
        assert manager.latest() == manager.path(2)
    with pytest.warns(UserWarning, match="skipping step 3, falling back .* truncated"):
        assert manager.restore(model=model).metadata == {"step": 2}

    # A flipped bit: the header is fine, the payload's SHA-256 is not; restore falls back.
    newest.write_bytes(data)
    flip_byte(newest, len(data) - 3)
    assert manager.latest() == newest
    with pytest.warns(UserWarning, match="skipping step 3, falling back .* SHA-256"):
        restored = manager.restore(model=model)
    assert restored.step == 2 and restored.path == manager.path(2)
    assert same(restored.model, model)

    # A mismatch is the caller's: no fallback.
    with pytest.raises(CheckpointError, match="configuration"):
        manager.restore(model=model, config={"width": 2})
    # Nothing readable at all.
    for step in [1, 2]:
        manager.path(step).write_bytes(b"")
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match="none of the checkpoints"):
        manager.restore(model=model)


def test_manager_restore_on_a_fresh_run(tmp_path):
    manager = CheckpointManager(tmp_path / "not-yet", keep=1)
    model = eqx.nn.Linear(2, 2, key=jax.random.key(0))
    assert manager.restore(model=model) is None
    assert not (tmp_path / "not-yet").exists()


def test_manager_deletes_only_after_the_new_file_is_in_place(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path, keep=1)
    model = {"x": jnp.ones(2)}
    manager.save(1, model=model)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        manager.save(2, model=model)
    monkeypatch.undo()
    assert manager.all_steps() == [1] and os.listdir(tmp_path) == ["checkpoint-00000001.rcx"]


def test_manager_saving_an_older_step_warns_and_keeps_it(tmp_path):
    manager = CheckpointManager(tmp_path, keep=2)
    model = {"x": jnp.ones(2)}
    for step in [10, 20]:
        manager.save(step, model=model)
    with pytest.warns(UserWarning, match="step 5 is below the newest step on disk, 20"):
        manager.save(5, model=model)
    assert manager.all_steps() == [5, 20]


def test_manager_removes_temporaries_of_dead_writers(tmp_path):
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    dead = tmp_path / f".checkpoint-00000001.rcx.tmp-{finished.pid}-0badc0de"
    alive = tmp_path / f".checkpoint-00000002.rcx.tmp-{os.getpid()}-0badc0de"
    foreign = tmp_path / f".other-00000002.rcx.tmp-{finished.pid}-0badc0de"
    for path in [dead, alive, foreign]:
        path.write_bytes(b"partial")
    CheckpointManager(tmp_path).save(3, model={"x": jnp.ones(2)})
    assert not dead.exists() and alive.exists() and foreign.exists()


def test_manager_removes_temporaries_of_dead_writers_when_it_opens(tmp_path):
    """A kill during the last save of a run leaves its temporary file; no later save may
    come, so opening the directory cleans it."""
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    dead = tmp_path / f".checkpoint-00000001.rcx.tmp-{finished.pid}-0badc0de"
    alive = tmp_path / f".checkpoint-00000002.rcx.tmp-{os.getpid()}-0badc0de"
    for path in [dead, alive]:
        path.write_bytes(b"partial")
    manager = CheckpointManager(tmp_path)
    assert not dead.exists() and alive.exists()
    assert manager.all_steps() == [] and manager.latest() is None
    CheckpointManager(tmp_path / "missing")  # nothing to clean, nothing created
    assert not (tmp_path / "missing").exists()


def test_manager_ignores_a_directory_named_like_a_checkpoint(tmp_path):
    """Neither read (it used to crash `latest` and `restore`) nor counted towards `keep` (it
    used to make `save` delete a real checkpoint) nor deleted."""
    manager = CheckpointManager(tmp_path, keep=2)
    model = {"x": jnp.ones(2)}
    manager.save(10, model=model)
    folder = manager.path(30)
    folder.mkdir()
    (folder / "mine.txt").write_text("mine")
    assert manager.all_steps() == [10]
    assert manager.latest() == manager.path(10)
    assert manager.restore(model=model).step == 10
    manager.save(20, model=model)
    assert manager.all_steps() == [10, 20]  # both real checkpoints kept
    manager.save(40, model=model)
    assert manager.all_steps() == [20, 40]
    assert (folder / "mine.txt").read_text() == "mine"
    with pytest.raises(IsADirectoryError, match="checkpoint-00000030.rcx' is a directory"):
        manager.save(30, model=model)
    assert (folder / "mine.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"keep": 0}, ["`keep`", "keep=0"]),
        ({"keep": 2.0}, ["`keep`", "keep=2.0"]),
        ({"prefix": ""}, ["`prefix`", "prefix=''"]),
        ({"prefix": "a/b"}, ["`prefix`", "prefix='a/b'"]),
        ({"prefix": ".hidden"}, ["`prefix`", "prefix='.hidden'"]),
    ],
)
def test_manager_bad_arguments(tmp_path, kwargs, words):
    with pytest.raises((ValueError, jaxtyping.TypeCheckError)) as info:
        CheckpointManager(tmp_path, **kwargs)
    message = str(info.value)
    if isinstance(info.value, jaxtyping.TypeCheckError):
        assert f"parameter '{words[0].strip('`')}'" in message, message
    else:
        for word in words:
            assert word in message, (word, message)
    with pytest.raises(ValueError, match=r"`step` must be a non-negative integer, got step=-3"):
        CheckpointManager(tmp_path).save(-3, model={"x": jnp.ones(2)})
