"""The synthetic tasks of `experiments.tasks`: interface, determinism, labels, baselines."""

import dataclasses
import importlib.util
import math
import statistics
import time

import numpy as np
import pytest
from hypothesis import given, strategies as st

from experiments.tasks import (
    AbstractTask,
    Adding,
    Batch,
    CopyMemory,
    CycleNavigation,
    Digits,
    InductionHeads,
    ListOps,
    make_task,
    ModularArithmetic,
    MQAR,
    Parity,
    SelectiveCopying,
    Task,
    TASKS,
)
from experiments.tasks._digits import load_pixels
from experiments.tasks._listops import apply_operator


# The digits ship inside scikit-learn (no download); without it the digits cases skip.
HAVE_SKLEARN = importlib.util.find_spec("sklearn") is not None
needs_sklearn = pytest.mark.skipif(not HAVE_SKLEARN, reason="scikit-learn is not installed")
ALL = sorted(TASKS)
PARAMS = [pytest.param(name, marks=needs_sklearn) if name == "digits" else name for name in ALL]
STATE_TRACKING = ["parity", "cycle_navigation", "modular_arithmetic"]

# Length overrides each task accepts, small sets so that examples stay cheap.
LENGTHS = {
    "selective_copying": [None, 8, 33, 300],
    "induction_heads": [None, 3, 17, 300],
    "mqar": [None, 24, 50, 100],
    "listops": [None],
    "adding": [None, 2, 3, 101],
    "copy_memory": [None, 1, 2, 50],
    "parity": [None, 1, 2, 41, 256],
    "cycle_navigation": [None, 1, 2, 41, 256],
    "modular_arithmetic": [None, 1, 2, 41, 256],
    "digits": [None],
}


# -- checks shared by the tests ----------------------------------------------------------


def check_structure(task: AbstractTask, batch: Batch, batch_size: int, length=None):
    """Shapes, dtypes, masks and ranges that the interface promises."""
    width = task.input_length(length)
    assert isinstance(batch, Batch)
    if task.input_kind == "tokens":
        assert task.vocab_size is not None and task.input_size is None
        assert batch.inputs.shape == (batch_size, width) and batch.inputs.dtype == np.int32
        assert batch.inputs.min() >= 0 and batch.inputs.max() < task.vocab_size
    else:
        assert task.input_kind == "features"
        assert task.vocab_size is None and task.input_size is not None
        shape = (batch_size, width, task.input_size)
        assert batch.inputs.shape == shape and batch.inputs.dtype == np.float32
        assert np.isfinite(batch.inputs).all()
    assert batch.mask.shape == (batch_size, width) and batch.mask.dtype == np.bool_
    # Right padding: the valid positions of every row are a non-empty prefix.
    count = batch.mask.sum(axis=1)
    assert (count >= 1).all()
    assert (batch.mask == (np.arange(width)[None] < count[:, None])).all()
    if task.kind == "classification":
        assert batch.targets.shape == (batch_size,) and batch.targets.dtype == np.int32
        assert batch.targets.min() >= 0 and batch.targets.max() < task.num_classes
        assert batch.target_mask is None and task.pooling in ("last", "mean")
    elif task.kind == "token":
        assert batch.targets.shape == (batch_size, width) and batch.targets.dtype == np.int32
        assert batch.target_mask.shape == (batch_size, width)
        assert batch.target_mask.dtype == np.bool_ and batch.target_mask.any(axis=1).all()
        assert batch.targets.min() >= 0 and batch.targets.max() < task.num_classes
        assert not (batch.targets[~batch.target_mask]).any()
        assert task.pooling == "none"
    else:
        assert task.kind == "regression" and task.num_classes == 1
        assert batch.targets.shape == (batch_size,) and batch.targets.dtype == np.float32
        assert batch.target_mask is None and task.pooling in ("last", "mean")


def check_selective_copying(task: SelectiveCopying, batch: Batch, length=None):
    K = task.num_tokens
    L = batch.inputs.shape[1] - K
    assert L == (task.length if length is None else length)
    assert (batch.inputs[:, L:] == task.marker_token).all()
    assert batch.target_mask[:, L:].all() and not batch.target_mask[:, :L].any()
    for row, target in zip(batch.inputs, batch.targets):
        body = row[:L]
        assert not (body == task.marker_token).any()
        data = body[body != task.blank_token]
        assert len(data) == K and (data < task.num_classes).all()
        assert data.tolist() == target[L:].tolist()


def check_induction_heads(task: InductionHeads, batch: Batch, length=None):
    L = batch.inputs.shape[1]
    for row, label in zip(batch.inputs, batch.targets):
        triggers = np.flatnonzero(row == task.trigger_token)
        assert len(triggers) == 2 and triggers[1] == L - 1 and triggers[0] <= L - 3
        assert label == row[triggers[0] + 1]


def check_mqar(task: MQAR, batch: Batch, length=None):
    K, half = task.num_pairs, task.vocab_size // 2
    for row, target, scored in zip(batch.inputs, batch.targets, batch.target_mask):
        keys, values = row[0 : 2 * K : 2], row[1 : 2 * K : 2]
        assert (keys < half).all() and (values >= half).all()
        assert len(set(keys.tolist())) == K and len(set(values.tolist())) == K
        binding = dict(zip(keys.tolist(), values.tolist()))
        queries = np.flatnonzero(scored)
        assert len(queries) == K and queries.min() >= 2 * K
        assert sorted(row[queries].tolist()) == sorted(keys.tolist())  # each key once
        assert [binding[k] for k in row[queries].tolist()] == target[queries].tolist()
        # After the context only the queries are keys.
        assert (row[2 * K :] < half).sum() == K


_OPS = {
    "MIN": min,
    "MAX": max,
    "MED": lambda args: int(statistics.median(args)),
    "SM": lambda args: sum(args) % 10,
}


def evaluate_listops(words, max_args=None, seen=None):
    """An independent recursive-descent evaluator over the token strings."""
    pos = 0

    def node(depth):
        nonlocal pos
        word = words[pos]
        pos += 1
        if word.isdigit():
            return int(word), depth
        assert word.startswith("[") and word[1:] in _OPS
        args, deepest = [], depth
        while words[pos] != "]":
            value, d = node(depth + 1)
            args.append(value)
            deepest = max(deepest, d)
        pos += 1
        assert 2 <= len(args) <= (max_args or len(args))
        if seen is not None and word == "[MED" and len(args) % 2 == 0:
            middle = sorted(args)[len(args) // 2 - 1 : len(args) // 2 + 1]
            seen.add(sum(middle) % 2)  # 1: the truncation mattered
        return _OPS[word[1:]](args), deepest

    value, depth = node(1)
    assert pos == len(words)
    return value, depth


def check_listops(task: ListOps, batch: Batch, length=None, seen=None):
    count = batch.mask.sum(axis=1)
    assert (count >= task.min_length).all() and (count <= task.max_length).all()
    pad = ListOps.TOKENS.index("<pad>")
    assert ((batch.inputs == pad) == ~batch.mask).all()
    for row, n, label in zip(batch.inputs, count, batch.targets):
        words = [ListOps.TOKENS[t] for t in row[:n]]
        # LRA's length: operators, digits and closing brackets, one token each.
        assert n == sum(w.isdigit() or w.startswith("[") or w == "]" for w in words)
        value, depth = evaluate_listops(words, task.max_args, seen)
        assert depth <= task.max_depth
        assert label == value


def check_adding(task: Adding, batch: Batch, length=None):
    values, marks = batch.inputs[..., 0], batch.inputs[..., 1]
    T = values.shape[1]
    assert ((values >= 0) & (values < 1)).all()
    assert set(np.unique(marks).tolist()) <= {0.0, 1.0}
    assert (marks[:, : T // 2].sum(axis=1) == 1).all()
    assert (marks[:, T // 2 :].sum(axis=1) == 1).all()
    expected = (values * marks).sum(axis=1, dtype=np.float32)
    assert np.array_equal(batch.targets, expected)


def check_copy_memory(task: CopyMemory, batch: Batch, length=None):
    T = task.length if length is None else length
    x = batch.inputs
    assert x.shape[1] == T + 20
    assert ((x[:, :10] >= 1) & (x[:, :10] <= 8)).all()
    assert (x[:, 10 : 10 + T - 1] == 0).all()
    assert (x[:, T + 9 :] == 9).all() and x[:, T + 9 :].shape[1] == 11
    assert (batch.targets[:, :-10] == 0).all()
    assert np.array_equal(batch.targets[:, -10:], x[:, :10])
    assert batch.target_mask.all()


def _reference_state(name, tokens):
    if name == "parity":
        state = 0
        for t in tokens:
            state ^= t
        return state
    if name == "cycle_navigation":
        state = 0
        for t in tokens:
            state = (state + {0: 0, 1: 1, 2: -1}[t]) % 5
        return state
    state = 0
    for t in tokens:
        op, d = ModularArithmetic.TOKENS[t]
        d = int(d)
        state = {"+": state + d, "-": state - d, "*": state * d}[op] % 5
    return state


def check_state_tracking(task, batch: Batch, length=None):
    count = batch.mask.sum(axis=1)
    if length is None:
        assert (count >= task.min_length).all() and (count <= task.max_length).all()
    else:
        assert (count == length).all()
    assert (batch.inputs[~batch.mask] == 0).all()
    for row, n, label in zip(batch.inputs, count, batch.targets):
        assert label == _reference_state(task.name, row[:n].tolist())


_DIGIT_LABELS = None


def check_digits(task: Digits, batch: Batch, length=None):
    global _DIGIT_LABELS
    if _DIGIT_LABELS is None:
        from sklearn.datasets import load_digits

        data = load_digits()
        images = (data.data / 16.0).astype(np.float32)
        _DIGIT_LABELS = {img.tobytes(): int(y) for img, y in zip(images, data.target)}
    inverse = np.argsort(task.permutation)
    for row, label in zip(batch.inputs[..., 0], batch.targets):
        assert ((row >= 0) & (row <= 1)).all()
        assert _DIGIT_LABELS[row[inverse].tobytes()] == label


CHECKS = {
    "selective_copying": check_selective_copying,
    "induction_heads": check_induction_heads,
    "mqar": check_mqar,
    "listops": check_listops,
    "adding": check_adding,
    "copy_memory": check_copy_memory,
    "parity": check_state_tracking,
    "cycle_navigation": check_state_tracking,
    "modular_arithmetic": check_state_tracking,
    "digits": check_digits,
}


def _equal(a: Batch, b: Batch) -> bool:
    return all(
        (x is None and y is None) or (x is not None and y is not None and np.array_equal(x, y))
        for x, y in zip(a, b)
    )


def _rows(batch: Batch) -> set[bytes]:
    inputs = batch.inputs.reshape(batch.inputs.shape[0], -1)
    return {row.tobytes() + m.tobytes() for row, m in zip(inputs, batch.mask)}


# -- registry and interface --------------------------------------------------------------


def test_registry_names_classes_and_presets():
    assert Task is AbstractTask
    assert set(TASKS) == set(CHECKS)
    for name, cls in TASKS.items():
        assert cls.name == name and issubclass(cls, AbstractTask)
        fields = {f.name for f in dataclasses.fields(cls)}
        assert set(cls.PAPER) <= fields
        assert make_task(name) == cls()
        assert make_task(name, preset="paper") == cls.paper()
        assert cls.kind in ("classification", "token", "regression")
        assert cls.input_kind in ("tokens", "features")
        assert cls.pooling in ("mean", "last", "none")
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(cls(), next(iter(fields)), 1)
    assert make_task("parity", max_length=7).max_length == 7
    assert make_task("mqar", preset="paper", length=64, num_pairs=4).vocab_size == 8192


@pytest.mark.parametrize("name", PARAMS)
def test_structure_and_labels(name):
    task = make_task(name)
    batch = task.batch(0, 0, 64)
    check_structure(task, batch, 64)
    CHECKS[name](task, batch)
    test = task.test_set(1, 32)
    check_structure(task, test, 32)
    CHECKS[name](task, test)


@pytest.mark.parametrize("name", PARAMS)
def test_deterministic_streams(name):
    task = make_task(name)
    first = task.batch(3, 5, 16)
    for step in range(5):  # whatever came before, step 5 is the same
        task.batch(3, step, 16)
    assert _equal(first, task.batch(3, 5, 16))
    assert _equal(first, make_task(name).batch(3, 5, 16))
    assert not np.array_equal(first.inputs, task.batch(3, 6, 16).inputs)
    assert not np.array_equal(first.inputs, task.batch(4, 5, 16).inputs)
    assert not np.array_equal(first.inputs, task.batch(3, 5, 16, split="test").inputs)
    assert _equal(task.test_set(3, 16), task.test_set(3, 16))


# Configurations where two independent draws essentially never coincide (state tracking at
# lengths 1-40 repeats short strings by necessity, so it is checked at lengths >= 30).
DISJOINT = {name: {} for name in ALL} | {name: {"min_length": 30} for name in STATE_TRACKING}


@pytest.mark.parametrize("name", PARAMS)
def test_test_stream_does_not_overlap_training_stream(name):
    task = make_task(name, **DISJOINT[name])
    test = _rows(task.test_set(0, 300))
    train = set()
    for step in range(8):
        train |= _rows(task.batch(0, step, 256))
    assert not test & train


@pytest.mark.parametrize("name", PARAMS)
def test_batches_are_vectorised(name):
    if name == "digits":
        load_pixels()  # the one-off load of the bundled digits is not generation time
    task = make_task(name)
    start = time.perf_counter()
    task.batch(0, 0, 256)
    assert time.perf_counter() - start < 2.0
    paper = make_task(name, preset="paper")
    start = time.perf_counter()
    paper.batch(0, 0, 16 if name == "listops" else 64)
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("name", PARAMS)
@given(
    seed=st.integers(0, 2**32 - 1),
    step=st.integers(0, 10**9),
    batch_size=st.sampled_from([1, 2, 7, 32]),
    length_index=st.integers(0, 4),
    split=st.sampled_from(["train", "test"]),
)
def test_any_stream_position(name, seed, step, batch_size, length_index, split):
    task = make_task(name)
    choices = LENGTHS[name]
    length = choices[length_index % len(choices)]
    batch = task.batch(seed, step, batch_size, split=split, length=length)
    check_structure(task, batch, batch_size, length)
    CHECKS[name](task, batch, length)
    assert _equal(batch, task.batch(seed, step, batch_size, split=split, length=length))


# -- task by task ------------------------------------------------------------------------


def test_selective_copying_paper_layout():
    task = SelectiveCopying.paper()
    assert (task.length, task.num_tokens, task.vocab_size, task.num_classes) == (4096, 16, 16, 14)
    batch = task.batch(0, 0, 4)
    check_selective_copying(task, batch)
    assert batch.inputs.shape == (4, 4096 + 16)


def test_induction_heads_length_extrapolation():
    task = InductionHeads.paper()
    assert task.length == 256 and 2**20 in task.TEST_LENGTHS
    for length in (64, 256, 4096):
        batch = task.test_set(0, 8, length=length)
        check_structure(task, batch, 8, length)
        check_induction_heads(task, batch)


def test_mqar_gaps_favour_short_distances():
    task = MQAR()
    batch = task.batch(0, 0, 2000)
    K = task.num_pairs
    slots = task.length - 2 * K
    gaps = np.nonzero(batch.target_mask)[1] - 2 * K + 1
    assert gaps.min() >= 1 and gaps.max() <= slots
    # Uniform without replacement would give a mean gap of (slots + 1) / 2.
    assert gaps.mean() < 0.8 * (slots + 1) / 2
    counts = np.bincount(gaps, minlength=slots + 1)[1:]
    assert counts[0] > counts[-1]


def test_listops_operators_and_independent_evaluator():
    assert apply_operator("MED", [2, 3]) == 2
    assert apply_operator("MED", [1, 2, 3, 4]) == 2
    assert apply_operator("MED", [9, 0, 5]) == 5
    assert apply_operator("SM", [7, 8, 9]) == 4
    assert apply_operator("MIN", [4, 2, 7]) == 2 and apply_operator("MAX", [4, 2, 7]) == 7
    assert evaluate_listops("[MED 2 3 ]".split())[0] == 2
    assert evaluate_listops("[MED 1 2 3 4 ]".split())[0] == 2
    assert evaluate_listops("[SM 7 8 9 ]".split())[0] == 4
    assert evaluate_listops("[MAX 2 [MIN 4 7 ] [MED 1 9 ] 0 ]".split())[0] == 5
    task = ListOps()
    seen: set[int] = set()
    check_listops(task, task.batch(0, 0, 500), seen=seen)
    assert seen == {0, 1}  # even-count medians with and without truncation occurred


def test_listops_lra_lengths_and_class_skew():
    task = ListOps.paper()
    assert (task.min_length, task.max_length) == (501, 1999)
    batch = task.batch(0, 0, 400)
    count = batch.mask.sum(axis=1)
    assert (count > 500).all() and (count < 2000).all()
    assert 900 < count.mean() < 1250  # LRA: mean length ≈ 1064
    check_listops(task, Batch(batch.inputs[:20], batch.targets[:20], batch.mask[:20]))
    freq = np.bincount(batch.targets, minlength=10) / batch.targets.size
    assert set(np.argsort(freq)[-2:].tolist()) == {0, 9}  # 0 and 9 are the common classes
    assert 0.12 < freq.max() < 0.23


def test_state_tracking_length_generalisation_protocol():
    for cls in (Parity, CycleNavigation, ModularArithmetic):
        train = cls()
        assert (train.min_length, train.max_length) == (1, 40)
        lengths = train.batch(0, 0, 2000).mask.sum(axis=1)
        assert lengths.min() == 1 and lengths.max() == 40
        low, high = cls.TEST_LENGTHS
        test_task = cls(min_length=low, max_length=high)
        test = test_task.test_set(0, 200)
        check_state_tracking(test_task, test)
        count = test.mask.sum(axis=1)
        assert count.min() >= 40 and count.max() <= 256 and test.inputs.shape[1] == 256
        exact = train.test_set(0, 16, length=200)
        assert exact.inputs.shape == (16, 200) and exact.mask.all()
        check_state_tracking(train, exact, 200)


@needs_sklearn
def test_digits_split_labels_and_permutation():
    task = Digits()
    train, test = task.split_indices("train"), task.split_indices("test")
    assert (train.size, test.size) == (1497, 300)
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(1797))
    # Independent of the training seed, and fixed: the whole test split in test_set.
    whole = _rows(task.test_set(0, 300))
    assert len(whole) == 300 and whole == _rows(task.test_set(5, 300))
    # One epoch of the training stream visits every training image exactly once.
    epoch = set()
    for step in range(3):
        epoch |= _rows(task.batch(7, step, 499))
    assert len(epoch) == 1497 and not epoch & whole
    permuted = Digits(permuted=True)
    perm = permuted.permutation
    assert np.array_equal(np.sort(perm), np.arange(64))
    assert not np.array_equal(perm, np.arange(64))
    assert np.array_equal(perm, Digits(permuted=True).permutation)
    a, b = task.batch(2, 3, 32), permuted.batch(2, 3, 32)
    assert np.array_equal(a.inputs[:, perm], b.inputs) and np.array_equal(a.targets, b.targets)
    check_digits(permuted, b)


# -- baselines ---------------------------------------------------------------------------


def test_adding_baseline_is_one_sixth():
    task = Adding()
    assert task.baseline().metric == "mse" and task.baseline().value == pytest.approx(1 / 6)
    targets = task.batch(0, 0, 20000).targets.astype(np.float64)
    assert np.mean((targets - 1.0) ** 2) == pytest.approx(1 / 6, abs=0.006)


def test_copy_memory_baseline_formula():
    task = CopyMemory(length=50)
    baseline = task.baseline()
    assert baseline.metric == "cross_entropy"
    assert baseline.value == pytest.approx(10 * math.log(8) / 70)
    # The memoryless predictor: 0 for sure until the last ten steps, then a uniform digit.
    probs = np.zeros((70, 10))
    probs[:-10, 0] = 1.0
    probs[-10:, 1:9] = 1 / 8
    batch = task.batch(0, 0, 64)
    picked = probs[np.arange(70)[None], batch.targets]
    assert -np.mean(np.log(picked)) == pytest.approx(baseline.value)


def test_listops_majority_baseline_is_measured():
    task = ListOps()
    baseline = task.baseline()
    labels = task.test_set(0, 1000).targets
    measured = np.bincount(labels, minlength=10).max() / labels.size
    assert baseline.metric == "accuracy" and abs(baseline.value - measured) < 0.04
    assert 0.1 < baseline.value < 0.2


@pytest.mark.parametrize("name", PARAMS)
def test_baselines_are_sensible(name):
    task = make_task(name)
    baseline = task.baseline()
    if task.kind == "regression":
        assert baseline.metric == "mse"
    elif name == "copy_memory":
        assert baseline.metric == "cross_entropy"
    else:
        assert baseline.metric == "accuracy" and 1 / task.num_classes <= baseline.value <= 0.5
    chance = {
        "selective_copying": 1 / 14,
        "induction_heads": 1 / 15,
        "mqar": 1 / 32,
        "parity": 1 / 2,
    }
    if name in chance:
        assert baseline.value == pytest.approx(chance[name])


# -- bad arguments -----------------------------------------------------------------------


BAD = [
    (lambda: SelectiveCopying(length=4, num_tokens=8), "num_tokens"),
    (lambda: SelectiveCopying(vocab_size=2), "vocab_size=2"),
    (lambda: SelectiveCopying().batch(0, 0, 2, length=4), "length=4"),
    (lambda: InductionHeads(length=2), "length=2"),
    (lambda: MQAR(vocab_size=8, num_pairs=8), "vocab_size"),
    (lambda: MQAR(length=10, num_pairs=4), "length=10"),
    (lambda: MQAR(alpha=0.0), "alpha=0.0"),
    (lambda: ListOps(min_length=10, max_length=5), "min_length=10"),
    (lambda: ListOps(max_depth=2, max_args=2, min_length=10), "min_length"),
    (lambda: ListOps(leaf_prob=1.0), "leaf_prob=1.0"),
    (lambda: ListOps().batch(0, 0, 2, length=10), "length=10"),
    (lambda: Adding(length=1), "length=1"),
    (lambda: CopyMemory(length=0), "length=0"),
    (lambda: Parity(min_length=5, max_length=3), "min_length=5"),
    (lambda: Parity(min_length=0), "min_length=0"),
    (lambda: CycleNavigation(max_length=2.5), "max_length=2.5"),
    (lambda: Parity().batch(0, 0, 2, length=0), "length=0"),
    (lambda: Digits(test_size=1797), "test_size=1797"),
    (lambda: Digits().batch(0, 0, 2, length=32), "length=32"),
    (lambda: Parity().batch(-1, 0, 2), "seed=-1"),
    (lambda: Parity().batch(0, -2, 2), "step=-2"),
    (lambda: Parity().batch(0, 0, 0), "batch_size=0"),
    (lambda: Parity().batch(0, 0, True), "batch_size=True"),
    (lambda: Parity().batch(0, 0, 2, split="valid"), "split='valid'"),
    (lambda: make_task("sorting"), "name='sorting'"),
    (lambda: make_task("parity", length=3), "length"),
    (lambda: make_task("parity", preset="huge"), "preset='huge'"),
]


@pytest.mark.parametrize("call, needle", BAD, ids=[needle for _, needle in BAD])
def test_bad_arguments_name_the_argument(call, needle):
    with pytest.raises(ValueError) as info:
        call()
    assert needle in str(info.value)
