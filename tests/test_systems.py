"""Discretisations and systems: the table, the matrix exponential of the augmented
system, an ODE solve with the input held on each step, orders of convergence, irregular
sampling, conjugate symmetry, and dense ↔ diagonal."""

import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
from hypothesis import given, strategies as st

import recurrax
from proofs.discretisation import held_input_solution

from .helpers import relative_error, tree_allclose
from .reference import discretise_reference, linear_system_loop


DISCRETISATIONS = [
    recurrax.ZeroOrderHold(),
    recurrax.Bilinear(),
    recurrax.ForwardEuler(),
    recurrax.BackwardEuler(),
]
DISC_IDS = [type(d).__name__ for d in DISCRETISATIONS]

STABLE = np.array([-0.5 + 2.0j, -1.5 + 0.3j, -0.1 + 4.0j, -2.0 + 0.0j])


def _system(seed=0, n=4, h=2, lam=STABLE, conjugate_symmetric=False):
    rng = np.random.default_rng(seed)
    b = rng.normal(size=(n, h)) + 1j * rng.normal(size=(n, h))
    c = rng.normal(size=(h, n)) + 1j * rng.normal(size=(h, n))
    d = rng.normal(size=h)
    return recurrax.ContinuousDiagonalSystem(
        jnp.asarray(lam[:n]), b, c, d, conjugate_symmetric=conjugate_symmetric
    )


@pytest.mark.parametrize("disc", DISCRETISATIONS, ids=DISC_IDS)
@given(
    re=st.floats(-50.0, -1e-6),
    im=st.floats(-100.0, 100.0),
    step=st.floats(1e-5, 1.0),
)
def test_against_the_table(disc, re, im, step):
    lam_bar, scale = disc(jnp.asarray([re + 1j * im]), jnp.asarray(step))
    ref_lam, ref_scale = discretise_reference(type(disc).__name__, np.array([re + 1j * im]), step)
    assert relative_error(lam_bar, ref_lam) < 1e-12
    # The reference evaluates ZOH's (e^z - 1)/Λ naively, which cancels for small z = ΔΛ:
    # its own error is about eps/|z| (recurrax uses expm1 and is accurate there).
    z = abs(step * (re + 1j * im))
    assert relative_error(scale, ref_scale) < 1e-12 + 4e-16 / z


def test_zero_order_hold_is_the_augmented_matrix_exponential():
    r"""exp([[ΔΛ, ΔB], [0, 0]]) = [[Λ̄, B̄], [0, I]]: ZOH against scipy's expm."""
    system = _system(n=4, h=3)
    n, h = 4, 3
    for step in (1e-3, 0.1, 0.7):
        augmented = np.zeros((n + h, n + h), np.complex128)
        augmented[:n, :n] = step * np.diag(np.asarray(system.Lambda))
        augmented[:n, n:] = step * np.asarray(system.B)
        expm = scipy.linalg.expm(augmented)
        discrete = system.discretise(step)
        np.testing.assert_allclose(np.diag(expm[:n, :n]), np.asarray(discrete.lam), rtol=1e-12)
        np.testing.assert_allclose(expm[:n, n:], np.asarray(discrete.B), rtol=1e-10, atol=1e-14)
    lam_bar, scale = recurrax.ZeroOrderHold()(jnp.asarray([0j, 1e-20 + 0j]), jnp.asarray(0.3))
    np.testing.assert_allclose(np.asarray(scale), [0.3, 0.3], rtol=1e-12)


def test_zero_order_hold_real_step_matches_the_complex_formula_with_derivatives():
    """A real step takes the real-arithmetic path, a complex one the complex formula: the
    same values and the same derivatives in float64 (to 1e-12 relative), from tiny to large
    steps, phases up to 100 and a conjugate-pair layout (float64, so any slip in the
    half-angle formulas shows far above rounding)."""
    rng = np.random.default_rng(0)
    lam = -np.exp(rng.uniform(-8, 4, (3, 6))) + 1j * rng.uniform(-100, 100, (3, 6))
    lam[0, 0] = -1e-3 + 0j
    step = np.exp(rng.uniform(-25, 1, (5, 3, 1)))

    def parts(lam_re, lam_im, step, as_complex):
        s = step.astype(jnp.complex128) if as_complex else step
        lam_bar, scale = recurrax.ZeroOrderHold()(jax.lax.complex(lam_re, lam_im), s)
        return jnp.stack([lam_bar.real, lam_bar.imag, scale.real, scale.imag])

    args = tuple(jnp.asarray(v) for v in (lam.real[None], lam.imag[None], step))
    for fn in (parts, jax.jacfwd(parts, argnums=(0, 1, 2))):
        ours, theirs = fn(*args, False), fn(*args, True)
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
            assert float(jnp.max(jnp.abs(a - b))) <= 1e-12 * max(1.0, float(jnp.max(jnp.abs(b))))


def test_zero_order_hold_is_exact_for_held_inputs():
    system = _system(n=4, h=2)
    u = jax.random.normal(jax.random.key(0), (12, 2))
    step = 0.25
    states = held_input_solution(system, u, step)  # diffrax, Dopri8, tolerances 1e-12
    discrete = system.discretise(step)
    hs = recurrax.linear_recurrence(discrete.lam, u.astype(discrete.B.dtype) @ discrete.B.T)
    assert relative_error(hs, states) < 1e-10


def _final_state(system, disc, n_steps, horizon=1.0):
    step = horizon / n_steps
    t = step * jnp.arange(1, n_steps + 1, dtype=jnp.float64)
    u = jnp.stack([jnp.sin(2 * t), jnp.cos(3 * t)], axis=-1)
    discrete = system.discretise(step, disc)
    b = u.astype(discrete.B.dtype) @ discrete.B.T
    return recurrax.linear_recurrence(discrete.lam, b)[-1]


@pytest.mark.parametrize(
    "disc, order",
    [(recurrax.Bilinear(), 2), (recurrax.ForwardEuler(), 1), (recurrax.BackwardEuler(), 1)],
    ids=["Bilinear", "ForwardEuler", "BackwardEuler"],
)
def test_order_of_convergence(disc, order):
    """Error of the final state against the held-input solution (ZOH, exact for it by the
    two tests above) for steps T/n, n = 40..640; the fitted log-log slope is the order."""
    system = _system(n=3, h=2)
    counts = np.array([40, 80, 160, 320, 640])
    errors = []
    for n in counts:
        exact = _final_state(system, recurrax.ZeroOrderHold(), int(n))
        errors.append(float(jnp.max(jnp.abs(_final_state(system, disc, int(n)) - exact))))
    slope = np.polyfit(np.log(1.0 / counts), np.log(errors), 1)[0]
    assert abs(slope - order) < 0.1, (slope, errors)


@given(
    re=st.floats(-1e3, -1e-9),
    im=st.floats(-1e3, 1e3),
    step=st.floats(1e-6, 1e2),
)
def test_bilinear_and_backward_euler_map_stable_into_the_unit_disk(re, im, step):
    """The left half-plane maps into the unit disk for every step; the bilinear
    map with its sign flipped (a public mistake) maps it outside."""
    lam = jnp.asarray([re + 1j * im])
    for disc in (recurrax.Bilinear(), recurrax.BackwardEuler()):
        assert float(jnp.abs(disc(lam, jnp.asarray(step))[0])[0]) < 1
    z = step * (re + 1j * im)
    flipped = (1 - z / 2) / (1 + z / 2)
    assert abs(flipped) > 1


def test_forward_euler_leaves_the_disk_for_large_steps():
    lam = jnp.asarray([-1.0 + 0j, -0.1 + 5j])
    lam_bar, _ = recurrax.ForwardEuler()(lam, jnp.asarray(2.5))
    assert bool(jnp.all(jnp.abs(lam_bar) > 1))


@pytest.mark.parametrize("disc", DISCRETISATIONS, ids=DISC_IDS)
@pytest.mark.parametrize("per_state", [False, True])
def test_irregular_sampling(disc, per_state):
    """One Δ per time step (and per state): an input-dependent recurrence, against a loop."""
    system = _system(n=4, h=2)
    rng = np.random.default_rng(1)
    length = 30
    steps = rng.uniform(0.01, 0.3, size=(length, 4 if per_state else 1))
    u = rng.normal(size=(length, 2))
    h0 = rng.normal(size=4) + 1j * rng.normal(size=4)
    h_last, y = system.solve(u, steps, disc, h0=h0)
    lam_bar, scale = discretise_reference(
        type(disc).__name__, np.asarray(system.Lambda)[None], steps
    )
    b_bar = scale[:, :, None] * np.asarray(system.B)[None]
    h_ref, y_ref = linear_system_loop(lam_bar, b_bar, system.C, system.D, u, h0=h0)
    assert relative_error(y, y_ref) < 1e-11
    assert relative_error(h_last, h_ref) < 1e-11


@pytest.mark.parametrize("disc", DISCRETISATIONS, ids=DISC_IDS)
def test_constant_steps_equal_the_discretised_system(disc):
    system = _system(n=4, h=2)
    u = jax.random.normal(jax.random.key(3), (25, 2))
    steps = jnp.asarray([0.01, 0.05, 0.1, 0.2])
    _, y = system.solve(u, steps, disc)
    _, y_step = system.solve(u, jnp.broadcast_to(steps, (25, 4)), disc)
    assert tree_allclose(y, system.discretise(steps, disc)(u), rtol=1e-12, atol=1e-12)
    assert tree_allclose(y, y_step, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("disc", DISCRETISATIONS, ids=DISC_IDS)
def test_conjugate_symmetric_equals_the_full_real_system(disc):
    """N states with 2 Re(Cx) equal 2N states in conjugate pairs with Re(Cx)."""
    half = _system(n=4, h=2, conjugate_symmetric=True)
    full = recurrax.ContinuousDiagonalSystem(
        jnp.concatenate([half.Lambda, jnp.conj(half.Lambda)]),
        jnp.concatenate([half.B, jnp.conj(half.B)]),
        jnp.concatenate([half.C, jnp.conj(half.C)], axis=1),
        half.D,
    )
    u = jax.random.normal(jax.random.key(4), (20, 2))
    y_half = half.discretise(0.1, disc)(u)
    y_full = full.discretise(0.1, disc)(u)
    assert tree_allclose(y_half, y_full, rtol=1e-11, atol=1e-12)
    # the full system with conjugate pairs really is real: its complex output part vanishes
    discrete = full.discretise(0.1, disc)
    hs = recurrax.linear_recurrence(discrete.lam, u.astype(discrete.B.dtype) @ discrete.B.T)
    assert float(jnp.max(jnp.abs(jnp.imag(hs @ discrete.C.T)))) < 1e-12


@pytest.mark.parametrize("n", [2, 8, 33])
def test_dense_to_diagonal(n, getkey):
    dense = recurrax.glorot_dense_system(n, 3, key=getkey())
    diagonal = dense.diagonalise()
    u = jax.random.normal(getkey(), (50, 3))
    y_dense = dense(u)
    assert relative_error(diagonal(u), y_dense) < 1e-9
    lam = np.asarray(diagonal.lam)
    assert _same_multiset(lam, np.linalg.eigvals(np.asarray(dense.A)))
    assert _same_multiset(lam, lam.conj())  # a real A: eigenvalues in conjugate pairs


def _same_multiset(a, b, tol=1e-10):
    distance = np.abs(a[:, None] - b[None, :])
    rows, cols = scipy.optimize.linear_sum_assignment(distance)
    return len(a) == len(b) and float(distance[rows, cols].max()) < tol


def test_dense_step_scan_call(getkey):
    dense = recurrax.glorot_dense_system(5, 2, key=getkey())
    u = jax.random.normal(getkey(), (9, 2))
    h, y = dense.scan(dense.init_state(), u)
    h_step, y_step = jax.lax.scan(lambda h, u_t: dense.step(h, u_t), dense.init_state(), u)
    assert tree_allclose((h, y), (h_step, y_step)) and tree_allclose(y, dense(u))


def test_defective_matrix_is_refused():
    jordan = jnp.asarray([[0.5, 1.0], [0.0, 0.5]])
    dense = recurrax.DenseLinearSystem(jordan, jnp.ones((2, 1)), jnp.ones((1, 2)), jnp.zeros(1))
    with pytest.raises(ValueError, match="not .*diagonalisable"):
        dense.diagonalise()


def _discrete(lam=3, b=(3, 2), c=(2, 3), d=2):
    return recurrax.DiscreteDiagonalSystem(jnp.ones(lam), jnp.ones(b), jnp.ones(c), jnp.ones(d))


@pytest.mark.parametrize(
    "make, word",
    [
        (lambda: _discrete(b=(4, 2)), "`B`"),
        (lambda: _discrete(c=(2, 4)), "`C`"),
        (lambda: _discrete(d=3), "`D`"),
        (
            lambda: recurrax.ContinuousDiagonalSystem(
                jnp.ones((3, 1)), jnp.ones((3, 2)), jnp.ones((2, 3)), jnp.ones(2)
            ),
            "`Lambda`",
        ),
        (
            lambda: recurrax.DenseLinearSystem(
                jnp.ones((3, 2)), jnp.ones((3, 2)), jnp.ones((2, 3)), jnp.ones(2)
            ),
            "`A`",
        ),
        (lambda: _system().discretise(jnp.ones(3)), "`step`"),
        (lambda: _system().solve(jnp.ones((5, 2)), jnp.ones((5, 3))), "`step`"),
    ],
)
def test_shape_errors(make, word):
    # Under the test suite's runtime type checking jaxtyping may name the parameter first.
    name = word.strip("`")
    with pytest.raises((ValueError, jaxtyping.TypeCheckError), match=f"[`']{name}[`']"):
        make()
