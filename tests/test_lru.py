"""The LRU against the paper's equations (Orvieto et al. 2023), its initialisation, its
floating-point edge, and the mistakes of public implementations
(docs/concepts/known-mistakes.md)."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest
import scipy.stats
from hypothesis import given, strategies as st

import recurrax

from .helpers import relative_error, tree_allclose
from .reference import lru_reference


@given(
    input_size=st.sampled_from([1, 3]),
    state_size=st.sampled_from([1, 5]),
    length=st.sampled_from([1, 4, 50]),
    ring=st.sampled_from([(0.0, 1.0), (0.9, 0.999), (0.999, 0.9999)]),
    max_phase=st.sampled_from([2 * math.pi, math.pi / 10]),
    bidirectional=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_against_paper_loop(input_size, state_size, length, ring, max_phase, bidirectional, seed):
    key, xkey = jax.random.split(jax.random.key(seed))
    lru = recurrax.LRU(
        input_size,
        state_size,
        r_min=ring[0],
        r_max=ring[1],
        max_phase=max_phase,
        bidirectional=bidirectional,
        key=key,
    )
    x = jax.random.normal(xkey, (length, input_size))
    _, y_ref = lru_reference(lru, x)
    assert relative_error(lru(x), y_ref) < 1e-11
    if not bidirectional:
        h0 = jnp.asarray(np.linspace(-1, 1, state_size) * (1 + 0.5j))
        states, y_ref = lru_reference(lru, x, h0=h0)
        h, y = lru.scan(h0, x)
        assert relative_error(y, y_ref) < 1e-11
        assert relative_error(h, states[-1]) < 1e-11


def test_float32_against_paper_loop(getkey):
    """float32 end to end at L = 4096 with |λ| up to 0.9999: error stays below 1e-4 of the
    output scale (the float32 rounding of the recurrence, not a formula error)."""
    lru = recurrax.LRU(8, 16, r_min=0.99, r_max=0.9999, dtype=jnp.float32, key=getkey())
    x = jax.random.normal(getkey(), (4096, 8), jnp.float32)
    _, y_ref = lru_reference(lru, x)
    y = lru(x)
    assert y.dtype == jnp.float32
    assert relative_error(y, y_ref) < 1e-4


def test_field_names_and_shapes(getkey):
    lru = recurrax.LRU(3, 7, key=getkey())
    shapes = {
        "nu_log": (7,),
        "theta_log": (7,),
        "gamma_log": (7,),
        "B_re": (7, 3),
        "B_im": (7, 3),
        "C_re": (3, 7),
        "C_im": (3, 7),
        "D": (3,),
    }
    for name, shape in shapes.items():
        assert getattr(lru, name).shape == shape, name
    bi = recurrax.LRU(3, 7, bidirectional=True, key=getkey())
    assert bi.C_re.shape == bi.C_im.shape == (3, 14)
    assert bi.B_re.shape == (7, 3) and bi.nu_log.shape == (7,)


def test_ring_initialisation_distribution():
    """Lemma 2: |λ|² ~ U[r_min², r_max²] and phase ~ U[0, max_phase] (Kolmogorov-Smirnov);
    and the test has power: a radius drawn uniformly (not by area) is rejected."""
    r_min, r_max, max_phase = 0.4, 0.9, 2.0
    lru = recurrax.LRU(
        1, 20_000, r_min=r_min, r_max=r_max, max_phase=max_phase, key=jax.random.key(0)
    )
    lam = np.asarray(lru.eigenvalues())
    modulus_sq = np.abs(lam) ** 2
    phase = np.mod(np.angle(lam), 2 * np.pi)
    assert modulus_sq.min() >= r_min**2 - 1e-12 and modulus_sq.max() <= r_max**2 + 1e-12
    uniform_area = scipy.stats.uniform(r_min**2, r_max**2 - r_min**2)
    assert scipy.stats.kstest(modulus_sq, uniform_area.cdf).pvalue > 1e-3
    assert scipy.stats.kstest(phase, scipy.stats.uniform(0, max_phase).cdf).pvalue > 1e-3
    radius_uniform = np.random.default_rng(0).uniform(r_min, r_max, 20_000)
    assert scipy.stats.kstest(radius_uniform**2, uniform_area.cdf).pvalue < 1e-6


def test_normalisation_and_matrix_initialisation():
    h, n = 64, 4096
    lru = recurrax.LRU(h, n, r_min=0.5, r_max=0.99, key=jax.random.key(1))
    lam = np.asarray(lru.eigenvalues())
    np.testing.assert_allclose(
        np.exp(np.asarray(lru.gamma_log)), np.sqrt(1 - np.abs(lam) ** 2), rtol=1e-12
    )
    # Glorot with halved variance: B parts N(0, 1/(2H)), C parts N(0, 1/N), D N(0, 1).
    for name, var in (
        ("B_re", 1 / (2 * h)),
        ("B_im", 1 / (2 * h)),
        ("C_re", 1 / n),
        ("C_im", 1 / n),
    ):
        values = np.asarray(getattr(lru, name)).ravel()
        assert abs(values.var() / var - 1) < 0.05, name
        assert abs(values.mean()) < 5 * math.sqrt(var / values.size), name
    d = np.asarray(lru.D)
    assert abs(d.var() - 1) < 0.5  # only 64 draws


def test_ring_draws_never_hit_the_interval_ends():
    """u1, u2 are drawn from the open interval (0, 1): finite ν_log and θ_log even with
    r_min = 0 (u1 = 0 would give ν = ∞) and for any key."""
    for seed in range(5):
        nu_log, theta_log = recurrax.ring_init(
            50_000, r_min=0.0, r_max=1.0, max_phase=2 * np.pi, key=jax.random.key(seed)
        )
        assert np.isfinite(np.asarray(nu_log)).all() and np.isfinite(np.asarray(theta_log)).all()


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(r_min=0.5, r_max=0.5), ["r_min=0.5", "r_max=0.5"]),
        (dict(r_min=-0.1), ["r_min=-0.1"]),
        (dict(r_max=1.01), ["r_max=1.01"]),
        (dict(r_min=0.9, r_max=0.1), ["r_min=0.9"]),
        (dict(max_phase=0.0), ["max_phase=0.0"]),
        (dict(max_phase=-1.0), ["max_phase=-1.0"]),
        (dict(max_phase=float("inf")), ["max_phase=inf"]),
    ],
)
def test_invalid_settings(kwargs, words):
    with pytest.raises(ValueError) as info:
        recurrax.LRU(2, 3, key=jax.random.key(0), **kwargs)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize(
    "sizes, word", [((0, 3), "input_size=0"), ((2, -1), "state_size=-1"), ((2, 2.5), "state_size")]
)
def test_invalid_sizes(sizes, word):
    # A non-integer size is caught by the runtime type check under the test suite, and by the
    # constructor's own check otherwise.
    with pytest.raises((ValueError, jaxtyping.TypeCheckError), match=word):
        recurrax.LRU(*sizes, key=jax.random.key(0))


# -- floating point: the edge of the stable exponential parameterisation --------------------


@pytest.mark.parametrize("dtype, edge", [(jnp.float32, -17.0), (jnp.float64, -37.6)])
def test_parameterisation_edge_is_real_and_handled(dtype, edge):
    """exp(-exp(ν_log)) rounds to 1.0 for very negative ν_log; the layer floors ν
    so |λ| < 1 stays true in floating point and a held input gives a bounded state."""
    nu_log = jnp.asarray([edge - 3.0], dtype)
    naive = jnp.exp(-jnp.exp(nu_log))
    assert float(naive[0]) == 1.0  # the edge exists
    lru = recurrax.LRU(1, 1, dtype=dtype, key=jax.random.key(0))
    lru = eqx.tree_at(lambda m: m.nu_log, lru, nu_log)
    modulus = float(jnp.abs(lru.eigenvalues())[0])
    assert modulus < 1.0
    assert -math.log(modulus) == pytest.approx(recurrax.stability_floor(dtype), rel=0.5)


@given(
    nu_log=st.floats(-200.0, 5.0),
    theta_log=st.floats(-30.0, 10.0),
    dtype=st.sampled_from([jnp.float32, jnp.float64]),
)
def test_every_parameter_value_is_stable(nu_log, theta_log, dtype):
    lru = recurrax.LRU(1, 3, dtype=dtype, key=jax.random.key(0))
    lru = eqx.tree_at(
        lambda m: (m.nu_log, m.theta_log),
        lru,
        (jnp.full((3,), nu_log, dtype), jnp.full((3,), theta_log, dtype)),
    )
    assert bool(jnp.all(jnp.abs(lru.eigenvalues()) < 1))


def test_floor_does_not_touch_ordinary_values(getkey):
    lru = recurrax.LRU(2, 64, r_min=0.0, r_max=0.9999, key=getkey())
    raw = jnp.exp(jax.lax.complex(-jnp.exp(lru.nu_log), jnp.exp(lru.theta_log)))
    np.testing.assert_array_equal(np.asarray(lru.eigenvalues()), np.asarray(raw))


# -- the mistakes found in public implementations (known-mistakes page) ---------------------


def test_input_is_scaled_by_exp_of_gamma_log(getkey):
    """B is scaled by γ = exp(gamma_log), not by gamma_log."""
    lru = recurrax.LRU(2, 3, key=getkey())
    x = jax.random.normal(getkey(), (4, 2))
    _, b = lru.coefficients(x)
    shifted = eqx.tree_at(lambda m: m.gamma_log, lru, lru.gamma_log + math.log(3.0))
    _, b3 = shifted.coefficients(x)
    assert tree_allclose(b3, 3 * b, rtol=1e-12)
    zero = eqx.tree_at(lambda m: m.gamma_log, lru, jnp.zeros(3))
    bu = (np.asarray(lru.B_re) + 1j * np.asarray(lru.B_im)) @ np.asarray(x).T
    assert tree_allclose(zero.coefficients(x)[1], bu.T, rtol=1e-12)


def test_feedthrough_is_elementwise_and_state_size_is_independent(getkey):
    """D ⊙ u (not D @ u), and an N different from H is a real state size."""
    lru = recurrax.LRU(3, 11, key=getkey())
    x = jax.random.normal(getkey(), (5, 3))
    silent = eqx.tree_at(lambda m: (m.C_re, m.C_im), lru, (jnp.zeros((3, 11)),) * 2)
    assert tree_allclose(silent(x), lru.D[None] * x, rtol=1e-14)
    assert lru.init_state().shape == (11,)


def test_state_update_is_elementwise(getkey):
    """λ ⊙ h, not a dot product λ · h: a basis state is scaled in place."""
    lru = recurrax.LRU(2, 5, key=getkey())
    lam = lru.eigenvalues()
    for j in range(5):
        h = jnp.zeros(5, lam.dtype).at[j].set(1.0)
        h_next, _ = lru.step(h, jnp.zeros(2))
        assert tree_allclose(h_next, h * lam, rtol=1e-14)


# -- conversions ----------------------------------------------------------------------------


@pytest.mark.parametrize("bidirectional", [False, True])
def test_discrete_system_round_trip(bidirectional, getkey):
    lru = recurrax.LRU(3, 6, r_min=0.2, r_max=0.99, bidirectional=bidirectional, key=getkey())
    x = jax.random.normal(getkey(), (40, 3))
    forward = lru.discrete_system()
    reverse_c = lru.discrete_system(reverse=True).C if bidirectional else None
    back = recurrax.LRU.from_discrete_system(forward, reverse_C=reverse_c, gamma_log=lru.gamma_log)
    assert tree_allclose(back(x), lru(x), rtol=1e-11, atol=1e-12)

    def params(m):
        return [m.nu_log, m.theta_log, m.gamma_log, m.B_re, m.B_im, m.C_re, m.C_im, m.D]

    assert tree_allclose(params(back), params(lru), rtol=1e-10, atol=1e-12)
    # with the default normalisation the parameters differ but the outputs do not
    other = recurrax.LRU.from_discrete_system(forward, reverse_C=reverse_c)
    assert tree_allclose(other(x), lru(x), rtol=1e-11, atol=1e-12)


def test_phase_is_reduced_to_zero_two_pi():
    """θ = arg λ̄ in (0, 2π]: a positive real λ̄ has θ = 2π (finite θ_log), a negative one π."""
    system = recurrax.DiscreteDiagonalSystem(
        jnp.asarray([0.5 + 0j, -0.5 + 0j, 0.5j, -0.5j]),
        jnp.ones((4, 1)),
        jnp.ones((1, 4)),
        jnp.zeros(1),
    )
    lru = recurrax.LRU.from_discrete_system(system)
    theta = np.exp(np.asarray(lru.theta_log))
    np.testing.assert_allclose(theta, [2 * np.pi, np.pi, np.pi / 2, 3 * np.pi / 2], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(lru.eigenvalues()), np.asarray(system.lam), atol=1e-14)


def test_unstable_system_has_no_lru_form():
    system = recurrax.DiscreteDiagonalSystem(
        jnp.asarray([0.5 + 0j, 1.0 + 0j, 0.3 + 1.2j]),
        jnp.ones((3, 1)),
        jnp.ones((1, 3)),
        jnp.zeros(1),
    )
    with pytest.raises(ValueError, match=r"\|lambda\| >= 1.*2 of 3.*1\.2369"):
        recurrax.LRU.from_discrete_system(system)

    @eqx.filter_jit
    def convert(s):
        return recurrax.LRU.from_discrete_system(s).nu_log

    with pytest.raises(Exception, match=r"\|lambda\| >= 1"):
        jax.block_until_ready(convert(system))


# -- the planar evaluation of `LRU.__call__` -----------------------------------------------------


def _general(lru, x):
    """`lru(x)` by the general path (coefficients -> complex solve -> readout): an all-True
    mask changes nothing but turns the planar evaluation off."""
    return lru(x, mask=jnp.ones(x.shape[0], bool))


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize(
    "method",
    [None, recurrax.SequentialScan(), recurrax.AssociativeScan(), recurrax.ChunkedScan(7)],
    ids=["auto", "sequential", "associative", "chunked"],
)
def test_planar_call_equals_the_general_path(bidirectional, method, monkeypatch):
    """`lru(x)` keeps the complex state as real planes; in float64 it gives the general
    path's outputs, gradients (every parameter and the input, through `jax.vmap` and
    `jax.jit`) and forward-mode tangents to 1e-12 relative, and it is the path taken."""
    import recurrax._lru as lru_module

    calls = []
    planar = lru_module.planar_linear_recurrence
    monkeypatch.setattr(lru_module, "planar_linear_recurrence",
                        lambda *a, **k: calls.append(k.get("reverse", False)) or planar(*a, **k))
    lru = recurrax.LRU(3, 5, r_min=0.5, r_max=0.99, bidirectional=bidirectional, method=method,
                       dtype=jnp.float64, key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (4, 37, 3), jnp.float64)

    def loss(call):
        return lambda m, x: jnp.sum(jnp.sin(jax.vmap(lambda u: call(m, u))(x)))

    ours = jax.jit(jax.value_and_grad(loss(lambda m, u: m(u)), argnums=(0, 1)))(lru, x)
    assert calls == ([False, True] if bidirectional else [False])
    theirs = jax.jit(jax.value_and_grad(loss(_general), argnums=(0, 1)))(lru, x)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        assert relative_error(a, b) <= 1e-12
    tangent = jax.random.normal(jax.random.key(2), x.shape[1:], jnp.float64)
    for call in (lambda u: lru(u), lambda u: _general(lru, u)):
        y, dy = jax.jvp(call, (x[0],), (tangent,))
        assert dy.shape == y.shape == x.shape[1:]
    y_ours, dy_ours = jax.jvp(lambda u: lru(u), (x[0],), (tangent,))
    y_theirs, dy_theirs = jax.jvp(lambda u: _general(lru, u), (x[0],), (tangent,))
    assert relative_error(y_ours, y_theirs) <= 1e-12
    assert relative_error(dy_ours, dy_theirs) <= 1e-12


def test_planar_call_float32_and_mixed_precision(getkey):
    """float32: the general path's outputs to float32 rounding. Mixed precision as
    `compute_dtype="bfloat16"` makes it (bfloat16 input and matrices, float32 transition):
    bfloat16 outputs, equal to the general path's up to bfloat16 rounding."""
    lru = recurrax.LRU(8, 16, r_min=0.9, r_max=0.999, dtype=jnp.float32, key=getkey())
    x = jax.random.normal(getkey(), (200, 8), jnp.float32)
    assert relative_error(lru(x), _general(lru, x)) <= 1e-5
    fields = lambda m: (m.B_re, m.B_im, m.C_re, m.C_im, m.D)  # noqa: E731
    mixed = eqx.tree_at(fields, lru, tuple(v.astype(jnp.bfloat16) for v in fields(lru)))
    x16 = x.astype(jnp.bfloat16)
    y16 = mixed(x16)
    assert y16.dtype == jnp.bfloat16
    assert relative_error(y16.astype(jnp.float32), _general(mixed, x16).astype(jnp.float32)) <= 2e-2


def test_planar_call_steps_aside_for_overrides_and_other_strategies(getkey):
    """A subclass that overrides `readout`, and a strategy other than the built-in ones (a
    user's), get the general path: the override is applied and the strategy sees only
    complex values."""
    x = jax.random.normal(getkey(), (20, 3), jnp.float64)

    class Doubled(recurrax.LRU):
        def readout(self, h, x):
            return 2 * super().readout(h, x)

    base = recurrax.LRU(3, 4, dtype=jnp.float64, key=jax.random.key(0))
    doubled = Doubled(3, 4, dtype=jnp.float64, key=jax.random.key(0))
    assert relative_error(doubled(x), 2 * base(x)) <= 1e-12

    seen = []

    class Recording(recurrax.AbstractScan):
        def solve(self, semiring, a, b, h0, *, reverse):
            seen.append((semiring.name, jnp.iscomplexobj(b)))
            return recurrax.SequentialScan().solve(semiring, a, b, h0, reverse=reverse)

    recorded = eqx.tree_at(lambda m: m.method, base, Recording(), is_leaf=lambda v: v is None)
    assert relative_error(recorded(x), base(x)) <= 1e-12
    assert seen and all(s == ("linear", True) for s in seen)


def test_planar_semiring_is_complex_arithmetic():
    """The planar semiring's product, step, power and identities are those of complex
    numbers on (real, imaginary) planes."""
    from recurrax._semiring import PLANAR

    rng = np.random.default_rng(0)

    def planes(z):
        return jnp.stack([z.real, z.imag], axis=-2)

    a, h, b = (rng.normal(size=(3, 5)) + 1j * rng.normal(size=(3, 5)) for _ in range(3))
    np.testing.assert_allclose(PLANAR.combine(planes(a), planes(h), planes(b)),
                               planes(a * h + b), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(PLANAR.mul(planes(a), planes(h)), planes(a * h), rtol=1e-12)
    np.testing.assert_allclose(PLANAR.power(planes(a), 7), planes(a**7), rtol=1e-12)
    one = PLANAR.one((3, 2, 5), jnp.float64)
    np.testing.assert_array_equal(PLANAR.mul(one, planes(h)), planes(h))
    np.testing.assert_array_equal(PLANAR.zero((3, 2, 5), jnp.float64), np.zeros((3, 2, 5)))
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 2, n\)"):
        PLANAR.one((3, 5), jnp.float64)
