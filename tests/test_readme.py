"""Every Python example in README.md runs as written."""

import pathlib
import re

import jax
import pytest


try:  # JAX >= 0.6
    from jax import enable_x64
except ImportError:  # the tested lower bound, JAX 0.5
    from jax.experimental import enable_x64


ROOT = pathlib.Path(__file__).resolve().parent.parent
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(code):
    # Users run with JAX's default configuration: float32 and standard promotion.
    with enable_x64(False), jax.numpy_dtype_promotion("standard"):
        exec(compile(code, "README.md", "exec"), {})


def test_readme_has_examples_and_commands():
    text = (ROOT / "README.md").read_text()
    assert BLOCKS and "make demo" in text and "make test" in text
