"""Every Python example runs as written: README.md, docs/*.md and the docstrings of the
public API."""

import ast
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


def _attribute_docstrings() -> dict[str, str]:
    """The docstrings written under the package's public constants (`NAME = ...` followed
    by a string), which `inspect` cannot reach."""
    docs = {}
    for path in sorted((ROOT / "src" / "recurrax").glob("*.py")):
        body = ast.parse(path.read_text()).body
        for node, after in zip(body, body[1:]):
            target = getattr(node, "target", None) or (getattr(node, "targets", None) or [None])[0]
            name = getattr(target, "id", None)
            if (
                name
                and name.isupper()
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[name] = inspect.cleandoc(after.value.value)
    return docs


def _docstring_blocks():
    seen = set()
    constants = _attribute_docstrings()
    for name in sorted(n for n in dir(recurrax) if not n.startswith("_")):
        obj = getattr(recurrax, name)
        members = [obj]
        if inspect.isclass(obj):
            members += [m for _, m in inspect.getmembers(obj) if inspect.isfunction(m)]
        for member in members:
            doc = (
                constants[name]
                if member is obj and name in constants
                else inspect.getdoc(member) or ""
            )
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


def test_every_public_name_has_an_example():
    """Each public class, function and constant documents at least one runnable example (the
    examples themselves run in `test_docstring_example_runs`)."""
    constants = _attribute_docstrings()
    missing = []
    for name in sorted(n for n in dir(recurrax) if not n.startswith("_")):
        obj = getattr(recurrax, name)
        if inspect.ismodule(obj):
            continue
        doc = constants[name] if name in constants else inspect.getdoc(obj) or ""
        if not FENCE.findall(doc):
            missing.append(name)
    assert not missing, missing
