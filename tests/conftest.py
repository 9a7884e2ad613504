import gc
import os
import random
import shutil
import tempfile


# One persistent XLA compilation cache per test run, shared by the pytest-xdist workers and by
# the subprocesses the tests start (they inherit the environment): many tests build the same
# models and compile the same programs, and every restart of a killed training run compiles its
# step again. The cache is keyed by the program and the JAX version, so a hit returns the
# executable a compilation would have produced. Removed when the run ends.
# (pytest-xdist's workers are started by the controller with its environment, so they all see
# the controller's directory.)
_CACHE_DIR = os.path.join(tempfile.gettempdir(), f"recurrax-tests-xla-cache-{os.getpid()}")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE_DIR)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import hypothesis  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


# Numerical checks run in float64 where they ask for it; promotion must always be explicit.
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

# CI: few examples, no deadline, and shapes drawn from small sets (see tests/helpers.py) so
# that JAX compiles once per shape rather than once per example.
hypothesis.settings.register_profile(
    "ci", max_examples=5, deadline=None, derandomize=True, print_blob=True
)
hypothesis.settings.register_profile("dev", max_examples=25, deadline=None, print_blob=True)
hypothesis.settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev")
)


@pytest.fixture
def getkey():
    """A fresh PRNG key on each call."""
    seed = random.randint(0, 2**31 - 1)
    key = jax.random.key(seed)

    def _getkey():
        nonlocal key
        key, sub = jax.random.split(key)
        return sub

    return _getkey


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def long_length():
    """Length for the slow accuracy checks: 65,536 with RECURRAX_FULL=1, else bounded."""
    return 65_536 if os.environ.get("RECURRAX_FULL") else 8_192


def _memory_maps() -> int:
    """How many memory maps this process holds (0 where /proc is not available)."""
    try:
        with open("/proc/self/maps", "rb") as maps:
            return sum(1 for _ in maps)
    except OSError:
        return 0


def _release_compiled_programs():
    jax.clear_caches()
    gc.collect()


# Every program XLA:CPU compiles and loads keeps about three memory maps in the process until
# JAX's caches drop it, and Linux allows 65,530 per process (`vm.max_map_count`). At the limit
# the compiler fails ("LLVM compilation error: Cannot allocate memory", then a segmentation
# fault: reproduced by `sysctl -w vm.max_map_count=3500` and a loop jitting small functions).
# tests/test_resets.py alone leaves about 10,900 maps (one process, lines of /proc/self/maps at
# its end), and xdist workers that had run most of the suite crashed in the compiler. So the
# compiled programs are released after each file, and after any test that leaves more than
# 30,000 maps.
@pytest.fixture(autouse=True, scope="module")
def _release_after_each_file():
    yield
    _release_compiled_programs()


@pytest.fixture(autouse=True)
def _release_when_many_maps():
    yield
    if _memory_maps() > 30_000:
        _release_compiled_programs()


def pytest_sessionfinish(session, exitstatus):
    """The run's compilation cache goes with it (only the controller, or a run without
    workers, removes it; a cache directory the user chose is left alone)."""
    if not hasattr(session.config, "workerinput") and os.environ["JAX_COMPILATION_CACHE_DIR"] == (
        _CACHE_DIR
    ):
        shutil.rmtree(_CACHE_DIR, ignore_errors=True)


def pytest_report_header(config):
    return f"jax {jax.__version__}, backend {jax.default_backend()}, x64 {jnp.zeros(()).dtype}"


@pytest.fixture(autouse=True)
def _restore_mixer_registry():
    """A test (or a docs page) that registers a mixer leaves the registry as it found it."""
    from recurrax import _registry

    saved = dict(_registry._REGISTRY)
    yield
    _registry._REGISTRY.clear()
    _registry._REGISTRY.update(saved)
