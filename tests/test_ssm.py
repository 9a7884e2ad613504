"""DiagonalSSM against a loop over its own continuous parameters; initialisations; the exact
conversion to an LRU."""

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
from .reference import ssm_reference


DISCRETISATIONS = [
    recurrax.ZeroOrderHold(),
    recurrax.Bilinear(),
    recurrax.ForwardEuler(),
    recurrax.BackwardEuler(),
]
INITS = [recurrax.HiPPOLegS(), recurrax.S4DLin(), recurrax.S4DInv()]


@given(
    disc=st.sampled_from(DISCRETISATIONS),
    init=st.sampled_from(INITS),
    delta=st.sampled_from(["per_state", "per_feature"]),
    conjugate_symmetric=st.booleans(),
    bidirectional=st.booleans(),
    length=st.sampled_from([1, 9, 60]),
    seed=st.integers(0, 2**16),
)
def test_against_loop(disc, init, delta, conjugate_symmetric, bidirectional, length, seed):
    key, xkey = jax.random.split(jax.random.key(seed))
    ssm = recurrax.DiagonalSSM(
        3,
        4,
        init=init,
        discretisation=disc,
        delta=delta,
        conjugate_symmetric=conjugate_symmetric,
        bidirectional=bidirectional,
        key=key,
    )
    x = jax.random.normal(xkey, (length, 3))
    assert relative_error(ssm(x), ssm_reference(ssm, x)) < 1e-11


@given(value=st.floats(-30.0, 30.0))
def test_real_part_is_negative_by_construction(value):
    ssm = recurrax.DiagonalSSM(2, 3, key=jax.random.key(0))
    ssm = eqx.tree_at(lambda m: m.Lambda_re_log, ssm, jnp.full((3,), value))
    re = np.asarray(jnp.real(ssm.continuous_eigenvalues()))
    assert (re < 0).all()


def test_s4d_formulas():
    n = 8
    lin = np.asarray(recurrax.S4DLin().eigenvalues(n, True))
    np.testing.assert_allclose(lin, -0.5 + 1j * np.pi * np.arange(n))
    inv = np.asarray(recurrax.S4DInv().eigenvalues(n, False))
    k = np.arange(n)
    np.testing.assert_allclose(inv, -0.5 + 1j * n / np.pi * (n / (2 * k + 1) - 1))
    inv_half = np.asarray(recurrax.S4DInv().eigenvalues(n, True))
    np.testing.assert_allclose(inv_half, -0.5 + 1j * 2 * n / np.pi * (2 * n / (2 * k + 1) - 1))


@pytest.mark.parametrize("n", [1, 4, 16, 64])
def test_hippo_legs_eigenvalues(n):
    """Against a general eigensolver on the normal part A + P Pᵀ built here from the HiPPO
    definition: real parts -1/2, and the conjugate-symmetric half plus its conjugates is the
    spectrum of the matrix of twice the size."""

    def normal_part(size):
        i = np.arange(size)
        a = np.where(
            i[:, None] > i[None, :],
            -np.sqrt(2 * i[:, None] + 1.0) * np.sqrt(2 * i[None, :] + 1.0),
            0.0,
        ) - np.diag(i + 1.0)
        np.testing.assert_array_equal(a, recurrax.hippo_legs_matrix(size))
        p = np.sqrt(i + 0.5)
        return a + np.outer(p, p)

    full = np.asarray(recurrax.HiPPOLegS().eigenvalues(n, False))
    expected = np.linalg.eigvals(normal_part(n))
    np.testing.assert_allclose(full.real, -0.5, atol=1e-9)
    np.testing.assert_allclose(np.sort(full.imag), np.sort(expected.imag), atol=1e-8 * n)
    half = np.asarray(recurrax.HiPPOLegS().eigenvalues(n, True))
    assert half.shape == (n,) and (half.imag > 0).all()
    both = np.concatenate([half, half.conj()])
    expected = np.linalg.eigvals(normal_part(2 * n))
    np.testing.assert_allclose(np.sort(both.imag), np.sort(expected.imag), atol=1e-8 * n)


def test_layer_starts_from_the_initialisation():
    for init in INITS:
        for delta in ("per_state", "per_feature"):
            ssm = recurrax.DiagonalSSM(3, 5, init=init, delta=delta, key=jax.random.key(0))
            lam = np.asarray(ssm.continuous_eigenvalues())
            expected = np.asarray(init.eigenvalues(5, True))
            np.testing.assert_allclose(
                lam.reshape(-1, 5), np.broadcast_to(expected, (lam.size // 5, 5)), rtol=1e-12
            )


def test_steps_are_log_uniform():
    ssm = recurrax.DiagonalSSM(
        1, 20_000, init=recurrax.S4DLin(), step_min=1e-3, step_max=1e-1, key=jax.random.key(2)
    )
    log_step = np.asarray(ssm.log_step)
    dist = scipy.stats.uniform(np.log(1e-3), np.log(1e-1) - np.log(1e-3))
    assert scipy.stats.kstest(log_step, dist.cdf).pvalue > 1e-3
    per_feature = recurrax.DiagonalSSM(7, 3, delta="per_feature", key=jax.random.key(2))
    assert per_feature.log_step.shape == (7,) and per_feature.init_state().shape == (7, 3)


@pytest.mark.parametrize(
    "disc", DISCRETISATIONS[:2] + DISCRETISATIONS[3:], ids=["zoh", "bilinear", "backward_euler"]
)
@pytest.mark.parametrize("delta", ["per_state", "per_feature"])
@pytest.mark.parametrize("conjugate_symmetric", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_to_lru_gives_identical_outputs(disc, delta, conjugate_symmetric, bidirectional, getkey):
    ssm = recurrax.DiagonalSSM(
        3,
        4,
        discretisation=disc,
        delta=delta,
        conjugate_symmetric=conjugate_symmetric,
        bidirectional=bidirectional,
        key=getkey(),
    )
    lru = ssm.to_lru()
    assert lru.state_size == (12 if delta == "per_feature" else 4)
    assert lru.bidirectional == bidirectional
    x = jax.random.normal(getkey(), (50, 3))
    assert tree_allclose(lru(x), ssm(x), rtol=1e-10, atol=1e-11)


def test_zero_order_hold_conversion_is_the_closed_form(getkey):
    """ZOH: ν = -Δ Re Λ and θ = Δ Im Λ mod 2π."""
    ssm = recurrax.DiagonalSSM(2, 6, init=recurrax.S4DLin(), step_max=1.0, key=getkey())
    lru = ssm.to_lru()
    lam, step = np.asarray(ssm.continuous_eigenvalues()), np.asarray(ssm.step_sizes())
    np.testing.assert_allclose(np.exp(np.asarray(lru.nu_log)), -step * lam.real, rtol=1e-12)
    theta = np.mod(step * lam.imag, 2 * np.pi)
    theta = np.where(theta <= 0, theta + 2 * np.pi, theta)
    np.testing.assert_allclose(np.exp(np.asarray(lru.theta_log)), theta, rtol=1e-10)


def test_forward_euler_with_a_large_step_has_no_lru_form(getkey):
    ssm = recurrax.DiagonalSSM(
        2,
        4,
        init=recurrax.S4DLin(),
        discretisation=recurrax.ForwardEuler(),
        step_min=0.5,
        step_max=0.9,
        key=getkey(),
    )
    with pytest.raises(ValueError, match=r"\|lambda\| >= 1"):
        ssm.to_lru()
    stable = recurrax.DiagonalSSM(
        2,
        4,
        init=recurrax.S4DLin(),
        discretisation=recurrax.ForwardEuler(),
        step_min=1e-4,
        step_max=1e-3,
        key=getkey(),
    )
    x = jax.random.normal(getkey(), (30, 2))
    assert tree_allclose(stable.to_lru()(x), stable(x), rtol=1e-10, atol=1e-11)


def test_discrete_system_is_flat_for_a_bank(getkey):
    ssm = recurrax.DiagonalSSM(3, 2, delta="per_feature", key=getkey())
    system = ssm.discrete_system()
    assert system.lam.shape == (6,) and system.B.shape == (6, 3) and system.C.shape == (3, 6)
    x = jax.random.normal(getkey(), (20, 3))
    assert tree_allclose(system(x), ssm(x), rtol=1e-11, atol=1e-12)
    assert tree_allclose(ssm.kernel(20), jnp.einsum("khh->kh", system.kernel(20)), rtol=1e-10)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(delta="per_head"), "delta"),
        (dict(step_min=0.0), "step_min=0.0"),
        (dict(step_min=0.2, step_max=0.1), "step_max=0.1"),
        (dict(init="hippo"), "init"),
        (dict(discretisation="zoh"), "discretisation"),
    ],
)
def test_invalid_settings(kwargs, word):
    with pytest.raises((ValueError, jaxtyping.TypeCheckError), match=word):
        recurrax.DiagonalSSM(2, 3, key=jax.random.key(0), **kwargs)
