"""Every Python example runs as written: README.md, docs/*.md and the docstrings of the
public API."""

import inspect
import pathlib
import re
import textwrap

import jax
import pytest

import recurrax


try:  # JAX >= 0.6
    from jax import enable_x64
except ImportError:  # the tested lower bound, JAX 0.5
    from jax.experimental import enable_x64


ROOT = pathlib.Path(__file__).resolve().parent.parent
FENCE = re.compile(r"```python\n(.*?)```", re.S)


def _markdown_pages():
    """Each page's blocks, run in order in one namespace (as a reader runs them)."""
    files = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
    for path in files:
        blocks = FENCE.findall(path.read_text())
        if blocks:
            yield pytest.param(blocks, id=str(path.relative_to(ROOT)))


def _docstring_blocks():
    seen = set()
    for name in sorted(n for n in dir(recurrax) if not n.startswith("_")):
        obj = getattr(recurrax, name)
        members = [obj]
        if inspect.isclass(obj):
            members += [m for _, m in inspect.getmembers(obj) if inspect.isfunction(m)]
        for member in members:
            doc = inspect.getdoc(member) or ""
            for i, code in enumerate(FENCE.findall(doc)):
                code = textwrap.dedent(code)
                if code not in seen:
                    seen.add(code)
                    yield pytest.param(code, id=f"{name}.{getattr(member, '__name__', '')}:{i}")


def _run(code, where, namespace=None):
    # Users run with JAX's default configuration: float32 and standard promotion.
    with enable_x64(False), jax.numpy_dtype_promotion("standard"):
        exec(compile(code, where, "exec"), {} if namespace is None else namespace)


@pytest.mark.parametrize("blocks", list(_markdown_pages()))
def test_markdown_examples_run(blocks):
    namespace = {}
    for i, code in enumerate(blocks):
        _run(code, f"block {i}", namespace)


@pytest.mark.parametrize("code", list(_docstring_blocks()))
def test_docstring_example_runs(code):
    _run(code, "docstring")


def test_readme_has_examples_and_commands():
    text = (ROOT / "README.md").read_text()
    assert FENCE.findall(text) and "make demo" in text and "make test" in text
