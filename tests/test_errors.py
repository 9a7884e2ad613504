"""Bad input gets a ValueError that names the argument and shows the bad value."""

import jax.numpy as jnp
import jaxtyping
import pytest

import recurrax


B = jnp.zeros((5, 3))


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: recurrax.linear_recurrence(jnp.ones(4), B), ["`a`", "(4,)", "(3,)"]),
        (lambda: recurrax.linear_recurrence(jnp.ones((4, 3)), B), ["`a`", "(4, 3)", "(5, 3)"]),
        (lambda: recurrax.linear_recurrence(jnp.ones((2, 5, 3)), B), ["`a`", "(2, 5, 3)"]),
        (lambda: recurrax.linear_recurrence(jnp.ones(3), jnp.zeros(())), ["`b`", "time axis"]),
        (lambda: recurrax.linear_recurrence(jnp.ones(3), B, jnp.ones(4)), ["`h0`", "(4,)"]),
        (
            lambda: recurrax.linear_recurrence(jnp.ones(3, jnp.float32), B),
            ["`a`", "float32", "float64"],
        ),
        (
            lambda: recurrax.linear_recurrence(jnp.ones(3), B, jnp.ones(3, jnp.float32)),
            ["`h0`", "float32"],
        ),
        (
            lambda: recurrax.linear_recurrence(jnp.ones(3, jnp.complex128), B),
            ["`a`", "complex128"],
        ),
        (lambda: recurrax.linear_recurrence(jnp.ones(3, jnp.int32), B), ["`a`", "int32"]),
        (lambda: recurrax.linear_recurrence(jnp.ones(3), B, method="chunked"), ["`method`"]),
        (
            lambda: recurrax.log_linear_recurrence(jnp.ones(3), B.astype(jnp.complex128)),
            ["`log_b`", "real"],
        ),
        (lambda: recurrax.log_linear_recurrence(jnp.ones(7), B), ["`log_a`", "(7,)"]),
        (lambda: recurrax.log_linear_recurrence(jnp.ones(3), B, jnp.ones(2)), ["`log_h0`"]),
        (lambda: recurrax.ChunkedScan(chunk_size=0), ["chunk_size=0"]),
        (lambda: recurrax.SequentialScan(unroll=0), ["unroll=0"]),
    ],
)
def test_clear_errors(call, words):
    # With jaxtyping's runtime checks on (the whole test run), a shape or dtype that breaks
    # the annotation is caught there first; it names the parameter too. Without them (as
    # users run), recurrax's own ValueError does.
    with pytest.raises((ValueError, jaxtyping.TypeCheckError)) as info:
        call()
    message = str(info.value)
    if isinstance(info.value, jaxtyping.TypeCheckError):
        name = words[0].strip("`")
        assert f"parameter '{name}'" in message, message
    else:
        for word in words:
            assert word in message, (word, message)


def test_own_validation_without_runtime_checks():
    """The checks users see (no beartype): rank and dtype errors from recurrax itself."""
    from recurrax._recurrence import _prepare

    with pytest.raises(ValueError, match="`b` of shape \\(\\) .* time axis"):
        _prepare("f", jnp.ones(3), jnp.zeros(()), None, complex_ok=True)
    with pytest.raises(ValueError, match="`a` of shape \\(3,\\) and dtype int32"):
        _prepare("f", jnp.ones(3, jnp.int32), B, None, complex_ok=True)
    with pytest.raises(ValueError, match="`b` of shape \\(5, 3\\) and dtype complex128"):
        _prepare("f", jnp.ones(3), B.astype(jnp.complex128), None, complex_ok=False)
