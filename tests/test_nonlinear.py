"""Nonlinear recurrences by Newton's method (DEER, quasi-DEER): every solver against a float64 NumPy
loop and against backpropagation through the sequential scan; the L-iteration bound; failures
reported; the GRU/LSTM closed-form Jacobian diagonals."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest

import recurrax


F64 = jnp.float64
NEWTON = [
    recurrax.DEER(),
    recurrax.QuasiDEER(method=recurrax.SequentialScan()),
    recurrax.DampedQuasiDEER(),
]
IDS = ["DEER", "QuasiDEER", "DampedQuasiDEER"]


def _problem(key, n=4, d=3, length=16, scale=0.9):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    w = scale * jax.random.normal(k1, (n, n), F64) / np.sqrt(n)
    u = jax.random.normal(k2, (n, d), F64)
    x = jax.random.normal(k3, (length, d), F64)
    h0 = 0.5 * jax.random.normal(k4, (n,), F64)
    return w, u, x, h0


def _numpy_states(w, u, x, h0):
    """h_t = tanh(W h_{t-1} + U x_t), a float64 NumPy loop."""
    w, u, x, h = (np.asarray(a, np.float64) for a in (w, u, x, h0))
    out = []
    for x_t in x:
        h = np.tanh(w @ h + u @ x_t)
        out.append(h)
    return np.stack(out)


def _loss(solver):
    def loss(w, u, x, h0):
        f = lambda h, x_t: jnp.tanh(w @ h + u @ x_t)  # noqa: E731 - closes over w, u
        states, _ = recurrax.nonlinear_recurrence(f, x, h0, solver=solver)
        return jnp.sum(jnp.sin(states) * jnp.arange(1, states.shape[0] + 1, dtype=F64)[:, None])

    return loss


@pytest.mark.parametrize("solver", NEWTON, ids=IDS)
def test_user_f_states_and_gradients_equal_sequential(solver, getkey):
    w, u, x, h0 = _problem(getkey())
    f = lambda h, x_t: jnp.tanh(w @ h + u @ x_t)  # noqa: E731
    states, stats = recurrax.nonlinear_recurrence(f, x, h0, solver=solver)
    np.testing.assert_allclose(states, _numpy_states(w, u, x, h0), rtol=0, atol=1e-9)
    assert bool(stats["converged"]) and 1 <= int(stats["iterations"]) <= x.shape[0]
    expected = jax.grad(_loss(recurrax.Sequential()), argnums=(0, 1, 2, 3))(w, u, x, h0)
    got = jax.grad(_loss(solver), argnums=(0, 1, 2, 3))(w, u, x, h0)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-8, atol=1e-8)


def test_sequential_gradient_matches_finite_differences(getkey):
    """The reference itself: backpropagation through the scan against central differences."""
    w, u, x, h0 = _problem(getkey(), length=8)
    loss = _loss(recurrax.Sequential())
    grad_w = jax.grad(loss)(w, u, x, h0)
    direction = jax.random.normal(getkey(), w.shape, F64)
    eps = 1e-6
    fd = (loss(w + eps * direction, u, x, h0) - loss(w - eps * direction, u, x, h0)) / (2 * eps)
    np.testing.assert_allclose(jnp.sum(grad_w * direction), fd, rtol=1e-7, atol=1e-8)


class _Cell(eqx.Module):
    linear: eqx.nn.Linear

    def __call__(self, h, x_t):
        return jnp.tanh(self.linear(jnp.concatenate([h, x_t])))


def test_module_step_function_gradients(getkey):
    """`f` may be an `equinox.Module`: gradients reach its parameters, under vmap too."""
    cell = _Cell(eqx.nn.Linear(5, 3, dtype=F64, key=getkey()))
    x = jax.random.normal(getkey(), (2, 20, 2), F64)

    def loss(cell, solver):
        def run(x):
            return recurrax.nonlinear_recurrence(cell, x, jnp.zeros(3, F64), solver=solver)

        states, stats = jax.vmap(run)(x)
        assert stats["iterations"].shape == (2,)
        return jnp.sum(states**2)

    expected = eqx.filter_grad(loss)(cell, recurrax.Sequential())
    got = eqx.filter_grad(loss)(cell, recurrax.QuasiDEER())
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(g, e, rtol=1e-8, atol=1e-9)


def _picard_worst_case(length):
    """A linear f with a zero Jacobian diagonal and gain 2 off the diagonal: quasi-DEER is
    then a Picard iteration, which needs exactly L iterations."""
    a = jnp.array([[0.0, 2.0], [2.0, 0.0]], F64)
    f = lambda h, x_t: a @ h + x_t  # noqa: E731
    x = jnp.linspace(-1.0, 1.0, 2 * length, dtype=F64).reshape(length, 2)
    return f, x, jnp.array([0.3, -0.2], F64)


@pytest.mark.parametrize("solver_cls", [recurrax.QuasiDEER, recurrax.DEER])
def test_first_k_states_exact_after_k_iterations(solver_cls):
    length = 10
    f, x, h0 = _picard_worst_case(length)
    exact, _ = recurrax.nonlinear_recurrence(f, x, h0)
    for k in (1, 3, 7):
        states, stats = recurrax.nonlinear_recurrence(
            f, x, h0, solver=solver_cls(max_steps=k, throw=False)
        )
        # DEER is exact at once for a linear f and sees a zero update at iteration 2.
        assert int(stats["iterations"]) == (k if solver_cls is recurrax.QuasiDEER else min(k, 2))
        np.testing.assert_allclose(states[:k], exact[:k], rtol=1e-12, atol=1e-12)
    # The bound is attained by quasi-DEER here and never exceeded: exact after L iterations.
    states, stats = recurrax.nonlinear_recurrence(f, x, h0, solver=recurrax.QuasiDEER())
    assert int(stats["iterations"]) == length and bool(stats["converged"])
    np.testing.assert_allclose(states, exact, rtol=1e-12)


def test_iterations_never_exceed_length_for_an_expansive_f():
    w, u, x, h0 = _problem(jax.random.key(0), length=12, scale=3.0)
    f = lambda h, x_t: jnp.tanh(w @ h + u @ x_t)  # noqa: E731
    for solver in (recurrax.QuasiDEER(), recurrax.DampedQuasiDEER()):
        states, stats = recurrax.nonlinear_recurrence(f, x, h0, solver=solver)
        assert int(stats["iterations"]) <= 12
        np.testing.assert_allclose(states, _numpy_states(w, u, x, h0), atol=1e-8)


def test_non_convergence_is_reported():
    f, x, h0 = _picard_worst_case(10)
    solver = recurrax.QuasiDEER(max_steps=3)
    with pytest.raises(Exception, match="did not converge"):
        jax.block_until_ready(recurrax.nonlinear_recurrence(f, x, h0, solver=solver))
    with pytest.raises(Exception, match="did not converge"):
        jit = jax.jit(lambda x: recurrax.nonlinear_recurrence(f, x, h0, solver=solver)[0])
        jax.block_until_ready(jit(x))
    loose = recurrax.QuasiDEER(max_steps=3, throw=False)
    states, stats = recurrax.nonlinear_recurrence(f, x, h0, solver=loose)
    assert not bool(stats["converged"]) and int(stats["iterations"]) == 3
    # Inputs that hold the state at a fixed point: the forward solve converges at once, the
    # adjoint (a Picard iteration here too) needs L iterations and says so.
    a = jnp.array([[0.0, 2.0], [2.0, 0.0]], F64)
    still = jnp.broadcast_to(h0 - a @ h0, x.shape)
    states, stats = recurrax.nonlinear_recurrence(f, still, h0, solver=solver)
    assert int(stats["iterations"]) == 1
    np.testing.assert_allclose(states, jnp.broadcast_to(h0, x.shape), atol=1e-15)
    grad = jax.grad(lambda x: recurrax.nonlinear_recurrence(f, x, h0, solver=solver)[0].sum())
    with pytest.raises(Exception, match="adjoint"):
        jax.block_until_ready(grad(still))


def test_non_finite_iterates_are_reported():
    f = lambda h, x_t: jnp.exp(50.0 * h) + x_t  # noqa: E731 - overflows in the iteration
    x = jnp.ones((6, 1), F64)
    solver = recurrax.QuasiDEER(throw=False)
    _, stats = recurrax.nonlinear_recurrence(f, x, jnp.zeros(1, F64), solver=solver)
    assert not bool(stats["converged"])


@pytest.mark.parametrize("cls", [recurrax.GRU, recurrax.LSTM], ids=["GRU", "LSTM"])
def test_closed_form_jacobian_diagonal(cls, getkey):
    layer = cls(3, 5, dtype=F64, key=getkey())
    parts = 3 if cls is recurrax.GRU else 4
    state_size = 5 if cls is recurrax.GRU else 10
    z = jax.random.normal(getkey(), (state_size,), F64)
    gi = 2 * jax.random.normal(getkey(), (parts * 5,), F64)
    if cls is recurrax.GRU:
        fn = lambda h: layer._cell(layer.weight_hh, h, gi)  # noqa: E731
    else:
        fn = lambda s: jnp.concatenate(layer._cell(layer.weight_hh, jnp.split(s, 2), gi))  # noqa: E731
    expected = jnp.diagonal(jax.jacfwd(fn)(z))
    np.testing.assert_allclose(layer._diagonal(layer.weight_hh, z, gi), expected, atol=1e-14)


@pytest.mark.parametrize(
    "cls,solver,reverse,masked",
    [
        (recurrax.GRU, recurrax.DEER(), False, True),
        (recurrax.GRU, recurrax.QuasiDEER(), True, True),
        (recurrax.GRU, recurrax.DampedQuasiDEER(), False, False),
        (recurrax.LSTM, recurrax.DEER(), True, False),
        (recurrax.LSTM, recurrax.QuasiDEER(), False, True),
        (recurrax.LSTM, recurrax.DampedQuasiDEER(), True, True),
    ],
    ids=["GRU-DEER", "GRU-QuasiDEER", "GRU-Damped", "LSTM-DEER", "LSTM-QuasiDEER", "LSTM-Damped"],
)
def test_layers_equal_sequential(cls, solver, reverse, masked, getkey):
    key = getkey()
    reference = cls(3, 4, dtype=F64, key=key)
    layer = cls(3, 4, solver=solver, dtype=F64, key=key)
    x = jax.random.normal(getkey(), (12, 3), F64)
    mask = (jnp.arange(12) < 9) if masked else None
    state = jax.tree.map(lambda s: 0.3 * jnp.ones_like(s), reference.init_state())

    def run(model):
        return model.scan(state, x, reverse=reverse, mask=mask)

    for got, want in zip(jax.tree.leaves(run(layer)), jax.tree.leaves(run(reference))):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)

    def loss(model):
        last, y = run(model)
        return jnp.sum(jnp.sin(y)) + jnp.sum(jnp.cos(jax.tree.leaves(last)[0]))

    expected, got = eqx.filter_grad(loss)(reference), eqx.filter_grad(loss)(layer)
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(g, e, rtol=1e-8, atol=1e-8)
    stats = layer.solver_stats(x, mask=mask)
    assert bool(stats["converged"]) and int(stats["iterations"]) <= 12


def test_float32_long_sequence():
    """float32, L = 4096: quasi-DEER stays within 1e-4 of the sequential GRU in a few
    iterations (docs/results/speed-nonlinear.md measures the full layer up to 16384)."""
    key = jax.random.key(0)
    x = jax.random.normal(key, (4096, 8), jnp.float32)
    reference = recurrax.GRU(8, 8, dtype=jnp.float32, key=key)
    layer = recurrax.GRU(8, 8, solver=recurrax.QuasiDEER(), dtype=jnp.float32, key=key)
    np.testing.assert_allclose(layer(x), reference(x), atol=1e-4)
    assert int(layer.solver_stats(x)["iterations"]) <= 20


def test_default_tolerance_by_dtype():
    from recurrax._nonlinear import default_tol

    assert default_tol(jnp.float64) == 1e-10 and default_tol(jnp.float32) == 1e-5


@pytest.mark.parametrize(
    "make,name",
    [
        (lambda: recurrax.QuasiDEER(max_steps=0), "max_steps"),
        (lambda: recurrax.DEER(max_steps=2.5), "max_steps"),
        (lambda: recurrax.QuasiDEER(tol=-1.0), "tol"),
        (lambda: recurrax.DampedQuasiDEER(max_gain=0.0), "max_gain"),
        (lambda: recurrax.GRU(2, 3, solver="deer", key=jax.random.key(0)), "solver"),
        (
            lambda: recurrax.LSTM(2, 3, solver=recurrax.SequentialScan(), key=jax.random.key(0)),
            "solver",
        ),
        (
            lambda: recurrax.nonlinear_recurrence(
                lambda h, x: h, jnp.ones((3, 1)), jnp.zeros((1, 1))
            ),
            "h0",
        ),
        (lambda: recurrax.nonlinear_recurrence(lambda h, x: h, jnp.ones(()), jnp.zeros(1)), "x"),
        (
            lambda: recurrax.nonlinear_recurrence(
                lambda h, x: h, jnp.ones((3, 1)), jnp.zeros(1), solver=recurrax.AssociativeScan()
            ),
            "solver",
        ),
    ],
)
def test_errors_name_the_argument(make, name):
    # A wrong type is caught by the runtime type checker first; it names the parameter too.
    with pytest.raises((ValueError, jaxtyping.TypeCheckError), match=f"`{name}`|'{name}'"):
        make()


def test_empty_sequence():
    states, stats = recurrax.nonlinear_recurrence(
        lambda h, x_t: h + x_t, jnp.zeros((0, 2)), jnp.zeros(2), solver=recurrax.QuasiDEER()
    )
    assert states.shape == (0, 2) and int(stats["iterations"]) == 0


@pytest.mark.parametrize(
    "cls,solver,reverse,masked",
    [
        (recurrax.GRU, recurrax.QuasiDEER(), False, True),
        (recurrax.GRU, recurrax.DEER(), True, False),
        (recurrax.LSTM, recurrax.DampedQuasiDEER(), True, True),
        (recurrax.LSTM, recurrax.QuasiDEER(), False, False),
    ],
    ids=["GRU-QuasiDEER", "GRU-DEER-reverse", "LSTM-Damped-reverse", "LSTM-QuasiDEER"],
)
def test_parallel_solvers_restart_at_segment_starts(cls, solver, reverse, masked, getkey):
    """Packed rows: a parallel solver with `resets` gives the sequential loop's states and
    gradients (each segment from `init_state()`; in reverse from each segment's end), and each
    segment's outputs equal the segment run alone."""
    key = getkey()
    reference = cls(3, 4, dtype=F64, key=key)
    layer = cls(3, 4, solver=solver, dtype=F64, key=key)
    x = jax.random.normal(getkey(), (13, 3), F64)
    resets = jnp.zeros(13, bool).at[jnp.array([0, 4, 5, 9])].set(True)
    mask = (jnp.arange(13) != 7) if masked else None
    state = jax.tree.map(lambda s: 0.3 * jnp.ones_like(s), reference.init_state())

    def run(model):
        return model.scan(state, x, reverse=reverse, mask=mask, resets=resets)

    for got, want in zip(jax.tree.leaves(run(layer)), jax.tree.leaves(run(reference))):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    if not masked and not reverse:
        y = layer(x, resets=resets)
        for start, stop in ((0, 4), (4, 5), (5, 9), (9, 13)):
            np.testing.assert_allclose(y[start:stop], reference(x[start:stop]), atol=1e-9)

    def loss(model):
        last, y = run(model)
        return jnp.sum(jnp.sin(y)) + jnp.sum(jnp.cos(jax.tree.leaves(last)[0]))

    expected, got = eqx.filter_grad(loss)(reference), eqx.filter_grad(loss)(layer)
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(g, e, rtol=1e-8, atol=1e-8)
