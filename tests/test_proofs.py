"""The `proofs` package: every check passes on recurrax, over random parameters and shapes
(hypothesis, small shape sets), and fails on a deliberately wrong variant; the runner, the
report and the command line."""

import dataclasses
import math
import os
import pathlib
import re
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

import proofs
import recurrax
from proofs import normalisation, stability


ROOT = pathlib.Path(__file__).resolve().parent.parent
KEY = jax.random.key


@pytest.fixture(autouse=True, scope="module")
def _fast_compilation():
    """The checks here run at small sizes, where compiling dominates: compile without most
    of XLA's optimisations for this module only (as `python -m proofs --quick` does)."""
    old = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


# -- the result and the runner -----------------------------------------------------------------


def _result(passed=True, **changes):
    result = proofs.CheckResult.measured(
        name="demo",
        family="stability",
        claim="A claim.",
        source="nowhere",
        statistic_name="x",
        statistic=0.5 if passed else 2.0,
        threshold=1.0,
        comparison="<",
    )
    return dataclasses.replace(result, **changes)


def test_compare_and_result():
    assert proofs.compare(0.5, 1.0, "<") and not proofs.compare(1.0, 1.0, "<")
    assert proofs.compare(1.0, 1.0, ">=") and not proofs.compare(math.nan, 1.0, "<=")
    assert _result().passed and _result().verdict == "PASS"
    assert not _result(False).passed and _result(False).verdict == "FAIL"
    with pytest.raises(ValueError, match="comparison"):
        proofs.compare(1.0, 1.0, "==")
    with pytest.raises(ValueError, match="comparison"):
        _result(comparison="~")


def _check(name, run, family="stability"):
    return proofs.Check(name, family, "A claim.", "nowhere", run)


def test_run_all_reports_failures_and_errors():
    def broken(quick, seed):
        raise RuntimeError("this check is broken")

    checks = [
        _check("good", lambda quick, seed: _result()),
        _check("bad", lambda quick, seed: _result(False)),
        _check("broken", broken, family="eigenvalues"),
    ]
    seen = []
    results = proofs.run_all(checks, on_result=seen.append)
    assert [r.passed for r in results] == [True, False, False] and seen == results
    assert "this check is broken" in results[2].details["error"]
    assert all("seconds" in r.details for r in results)
    assert proofs.exit_code(results) == 1
    assert proofs.exit_code(results[:1]) == 0
    assert proofs.exit_code([]) == 1
    assert [r.name for r in proofs.run_all(checks, family=["eigenvalues"])] == ["broken"]
    with pytest.raises(ValueError, match="unknown checks"):
        proofs.select(checks, only=["nope"])
    with pytest.raises(ValueError, match="unknown families"):
        proofs.select(checks, family=["nope"])


def test_registry_names_and_families():
    names = [c.name for c in proofs.REGISTRY]
    assert len(names) == len(set(names)) >= 25
    assert {c.family for c in proofs.REGISTRY} == set(proofs.FAMILIES)


def test_main_exit_code_report_and_docs(tmp_path, capsys):
    from proofs.__main__ import main
    from proofs._util import new_figure

    figure, ax = new_figure()
    ax.plot([0, 1], [0, 1])
    checks = [
        _check("good", lambda quick, seed: _result(figures=[figure])),
        _check("bad", lambda quick, seed: _result(False), family="equivalences"),
    ]
    out, docs = tmp_path / "out", tmp_path / "docs"
    assert main(["--out", str(out), "--docs", "--docs-dir", str(docs)], checks=checks) == 1
    printed = capsys.readouterr().out
    assert "FAIL" in printed and "1 of 2 checks pass" in printed
    assert (out / "report.md").exists() and (out / "figures" / "good.png").stat().st_size > 0
    page = (docs / "proofs.md").read_text()
    # The only Python block is the intro's short example (tests/test_readme.py runs it).
    assert "python -m proofs --docs" in page and page.count("```python") == 1
    for link in re.findall(r"!\[[^]]*\]\(([^)]+)\)", page):
        assert (docs / link).stat().st_size > 0
    assert main(["--only", "good", "--out", str(out)], checks=checks) == 0
    assert main(["--only", "nope", "--out", str(out)], checks=checks) == 2
    assert main(["--list"], checks=checks) == 0


def test_command_line_quick(tmp_path):
    """`python -m proofs --quick` in a fresh process: every check passes, the table is
    printed, the report and its figures are written."""
    out = tmp_path / "proofs"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    done = subprocess.run(
        [sys.executable, "-m", "proofs", "--quick", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    count = len(proofs.REGISTRY)
    assert f"{count} of {count} checks pass" in done.stdout
    assert "verdict" in done.stdout and "claim (source)" in done.stdout
    report = (out / "report.md").read_text()
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", report)
    assert len(links) >= 15
    for link in links:
        assert (out / link).stat().st_size > 1000


# -- stability ---------------------------------------------------------------------------------

SMALL_GRID = dict(grid=(41, 3), samples=64, plot=False)


def test_unit_disk_and_its_wrong_variants():
    assert proofs.check_unit_disk(**SMALL_GRID).passed
    # Without the floor, exp(-exp(nu_log)) rounds to 1; the plain exponential
    # leaves the disk outright.
    assert not proofs.check_unit_disk(proofs.STABLE_EXPONENTIAL, **SMALL_GRID).passed
    assert not proofs.check_unit_disk(proofs.PLAIN_EXPONENTIAL, **SMALL_GRID).passed


@given(
    low=st.floats(-400.0, 10.0),
    width=st.floats(0.0, 60.0),
    theta_low=st.floats(-50.0, 10.0),
    seed=st.integers(0, 2**16),
)
def test_unit_disk_for_random_parameter_ranges(low, width, theta_low, seed):
    result = proofs.check_unit_disk(
        nu_log_range=(low, low + width),
        theta_log_range=(theta_low, theta_low + 2.0),
        seed=seed,
        **SMALL_GRID,
    )
    assert result.passed, result.details


def test_rounding_edge_and_its_wrong_variants():
    result = proofs.check_rounding_edge(plot=False)
    assert result.passed, result.details
    edges = result.details["per dtype"]
    assert edges["float32"]["measured edge"] == pytest.approx(-17.33, abs=0.01)
    assert edges["float64"]["measured edge"] == pytest.approx(-37.43, abs=0.01)
    # The LRU's floor removes the edge; a wrong stated edge is caught.
    assert not proofs.check_rounding_edge(proofs.LRU_EIGENVALUES, plot=False).passed
    wrong = (("float32", -12.0), ("float64", -37.6))
    assert not proofs.check_rounding_edge(stated=wrong, plot=False).passed


@pytest.mark.parametrize(
    "parameterisation, leaves",
    [
        (proofs.PLAIN_EXPONENTIAL, True),
        (proofs.REAL_IMAGINARY, True),
        (proofs.STABLE_EXPONENTIAL, False),
        (proofs.LRU_EIGENVALUES, False),
    ],
    ids=["exponential", "re-im", "stable", "lru"],
)
def test_leaving_the_disk(parameterisation, leaves):
    result = proofs.check_leaves_disk(parameterisation, state_size=128, samples=16, plot=False)
    assert result.passed == leaves, result.details


def _gamma_log_mistake(lru):
    """A public mistake: B scaled by gamma_log instead of exp(gamma_log)."""

    def step(h, u_t):
        b = jax.lax.complex(lru.B_re @ u_t, lru.B_im @ u_t) * lru.gamma_log.astype(h.dtype)
        return lru.eigenvalues() * h + b, None

    return step


@given(
    seed=st.integers(0, 2**16),
    ring=st.sampled_from([(0.0, 0.5), (0.5, 0.9), (0.9, 0.999)]),
    bound=st.floats(0.1, 10.0),
)
def test_bibo_bound_holds(seed, ring, bound):
    lru = recurrax.LRU(3, 8, r_min=ring[0], r_max=ring[1], key=KEY(seed))
    result = proofs.check_bibo(lru, bound=bound, length=100, batch=2, seed=seed, plot=False)
    assert result.passed, result.details


def test_bibo_bound_catches_the_gamma_log_mistake():
    lru = recurrax.LRU(3, 8, r_min=0.9, r_max=0.999, key=KEY(0))
    assert proofs.check_bibo(lru, length=300, batch=2, plot=False).passed
    wrong = proofs.check_bibo(lru, step=_gamma_log_mistake(lru), length=300, batch=2, plot=False)
    assert not wrong.passed and wrong.statistic > 2


def _unnormalised_rglru(layer):
    """The RG-LRU without its sqrt(1 - a_t^2) input factor."""

    def step(h, x_t):
        r, i = layer.gates(x_t[None])
        h = jnp.exp(layer.log_transition(x_t[None]))[0] * h + i[0] * x_t
        return h, h

    return step


def test_rglru_bound_holds_and_catches_the_unnormalised_step():
    layer = recurrax.RGLRU(4, key=KEY(1))
    result = proofs.check_rglru_bound(layer, length=100, batch=1, ascent_steps=5, plot=False)
    assert result.passed, result.details
    # |h_t| <= max |x| is not a property of the RG-LRU: a constant input goes beyond it.
    assert result.details["max |h| / M (the convex-combination bound |h| <= M would need <= 1)"] > 2
    wrong = proofs.check_rglru_bound(
        layer, step=_unnormalised_rglru(layer), length=100, batch=1, ascent_steps=5, plot=False
    )
    assert not wrong.passed and wrong.statistic > 1.2


def test_check_stability_walks_models_and_layers():
    model, _ = recurrax.ModelConfig(
        mixer="lru", d_model=8, depth=2, input_size=3, state_size=4, norm="layer"
    ).build(key=KEY(0))
    ssm = recurrax.DiagonalSSM(2, 4, key=KEY(1))
    result = proofs.check_stability((model, {"ssm": ssm}), plot=False)
    assert result.passed
    assert len(result.details["layers"]) == 3
    assert proofs.check_stability(ssm, plot=True).figures
    # Forward Euler with a large step leaves the disk; so does a system given as |λ| > 1.
    unstable = recurrax.DiagonalSSM(
        2,
        4,
        init=recurrax.S4DLin(),
        discretisation=recurrax.ForwardEuler(),
        step_min=3.0,
        step_max=3.0,
        key=KEY(2),
    )
    assert not proofs.check_stability([model, unstable], plot=False).passed
    system = recurrax.DiscreteDiagonalSystem(
        jnp.asarray([0.5 + 0j, 1.01 + 0j]), jnp.ones((2, 1)), jnp.ones((1, 2)), jnp.ones(1)
    )
    assert not proofs.check_stability(system, plot=False).passed
    with pytest.raises(ValueError, match="no time-invariant recurrent layer"):
        proofs.check_stability(recurrax.MinGRU(2, 3, key=KEY(3)))


def test_stability_after_training_reports_the_edge():
    model, _ = recurrax.ModelConfig(
        mixer="lru",
        d_model=8,
        depth=1,
        input_size=3,
        output_size=1,
        state_size=4,
        norm="layer",
        pooling="none",
        mixer_options={"r_min": 0.9, "r_max": 0.999},
    ).build(key=KEY(0))
    trained, details = stability.train_briefly(model, steps=3, length=16, batch=2)
    assert details["training steps"] == 3
    result = proofs.check_stability(trained, plot=False)
    assert result.passed
    (layer,) = result.details["layers"].values()
    assert layer["min nu_log - edge"] > 0


# -- eigenvalue distributions ----------------------------------------------------------------


@given(
    seed=st.integers(0, 2**16),
    ring=st.sampled_from([(0.0, 1.0, 2 * math.pi), (0.5, 0.9, math.pi), (0.999, 0.9999, 0.3)]),
)
def test_ring_initialisation_is_area_uniform(seed, ring):
    result = proofs.check_ring_init(
        rings=(ring,), state_size=1024, p_threshold=1e-6, seed=seed, plot=False
    )
    assert result.passed, result.details


def _radius_uniform(n, r_min, r_max, max_phase, key):
    """Wrong: |λ| (not |λ|²) uniform on the ring."""
    k1, k2 = jax.random.split(key)
    r = np.asarray(jax.random.uniform(k1, (n,), minval=r_min, maxval=r_max))
    return r * np.exp(1j * np.asarray(jax.random.uniform(k2, (n,), maxval=max_phase)))


def _half_phase(n, r_min, r_max, max_phase, key):
    """Wrong: the phase only covers half of [0, max_phase]."""
    lam = proofs.eigenvalues.lru_ring_eigenvalues(n, r_min, r_max, max_phase / 2, key)
    return lam


@pytest.mark.parametrize("init", [_radius_uniform, _half_phase], ids=["radius", "phase"])
def test_ring_check_rejects_wrong_initialisations(init):
    result = proofs.check_ring_init(init, rings=((0.0, 1.0, 2 * math.pi),), plot=False)
    assert not result.passed and result.statistic < 1e-10


def _normal_matrix(scale):
    def matrix(n, key):
        seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
        return np.random.default_rng(seed).normal(size=(n, n)) * scale(n)

    return matrix


def test_circular_law_and_wrong_scalings():
    sizes = dict(sizes=(16, 32, 64, 128), eigenvalues_per_size=1024, plot=False)
    assert proofs.check_circular_law(**sizes).passed
    assert proofs.check_circular_law(_normal_matrix(lambda n: 1 / np.sqrt(n)), **sizes).passed
    # N(0, 1) and N(0, 2/N) entries fill the disk of radius sqrt(N) and sqrt(2) instead.
    assert not proofs.check_circular_law(_normal_matrix(lambda n: 1.0), **sizes).passed
    assert not proofs.check_circular_law(_normal_matrix(lambda n: np.sqrt(2 / n)), **sizes).passed


INITS = [
    (recurrax.S4DLin(), proofs.s4d_lin_formula),
    (recurrax.S4DInv(), proofs.s4d_inv_formula),
    (recurrax.HiPPOLegS(), proofs.hippo_legs_spectrum),
]


@pytest.mark.parametrize("init, formula", INITS, ids=["s4d-lin", "s4d-inv", "hippo-legs"])
@given(size=st.sampled_from([1, 2, 7, 16, 33]))
def test_ssm_initialisations_follow_their_formulas(init, formula, size):
    assert proofs.check_ssm_init(init, formula, claim="", sizes=(size,), plot=False).passed


class _OffByOne(recurrax.AbstractSSMInit):
    """Wrong: S4D-Lin with n starting at 1."""

    def eigenvalues(self, state_size, conjugate_symmetric):
        return -0.5 + 1j * np.pi * np.arange(1, state_size + 1)


def test_ssm_init_check_rejects_wrong_sets():
    assert not proofs.check_ssm_init(_OffByOne(), proofs.s4d_lin_formula, claim="").passed
    assert not proofs.check_ssm_init(recurrax.S4DInv(), proofs.s4d_lin_formula, claim="").passed
    assert not proofs.check_ssm_init(
        recurrax.S4DLin(), proofs.hippo_legs_spectrum, claim="", plot=True
    ).passed


# -- normalisation ----------------------------------------------------------------------------


def test_prop3_and_the_normalised_layer():
    options = dict(rings=((0.0, 0.9),), state_size=1024, batch=2, window=512, plot=False)
    result = proofs.check_prop3(**options)
    assert result.passed, result.details
    # Normalised, the gain is 1, not Prop. 3's 2.05.
    normalised = proofs.check_prop3(normalisation.normalised_lru(8, 1024), **options)
    assert not normalised.passed


@given(seed=st.integers(0, 2**16), r_max=st.sampled_from([0.5, 0.9, 0.99]))
def test_normalised_state_variance(seed, r_max):
    result = proofs.check_normalised_variance(
        r_maxes=(r_max,),
        state_size=64,
        batch=4,
        window=1024,
        tolerance=0.1,
        seed=seed,
        plot=False,
    )
    assert result.passed, result.details


def test_unnormalised_state_variance_fails():
    result = proofs.check_normalised_variance(
        normalisation.unnormalised_lru(4, 64), r_maxes=(0.9,), state_size=64, batch=2, plot=False
    )
    assert not result.passed and result.statistic > 1


def test_deep_stack_variance_normalised_and_not():
    options = dict(depth=3, width=8, state_size=16, length=256, batch=2, plot=False)
    assert proofs.check_deep_stack_variance(contrast=False, **options).passed
    unnormalised = normalisation.stack_layer(8, 16, normalise=False)
    assert not proofs.check_deep_stack_variance(unnormalised, contrast=False, **options).passed


# -- equivalences ---------------------------------------------------------------------------


class _FlippedBilinear(recurrax.AbstractDiscretisation):
    """A public mistake: the bilinear discretisation with its sign flipped."""

    def __call__(self, lam, step):
        step = jnp.asarray(step).astype(jnp.asarray(lam).dtype)
        z = step * lam
        return (1 - z / 2) / (1 + z / 2), step / (1 + z / 2)


def test_zero_order_hold_is_exact_and_others_are_not():
    assert proofs.check_held_input_exact(length=8, plot=False).passed
    assert not proofs.check_held_input_exact(recurrax.Bilinear(), length=8, plot=False).passed
    assert not proofs.check_held_input_exact(_FlippedBilinear(), length=8, plot=False).passed


@pytest.mark.parametrize(
    "method, order, holds",
    [
        (recurrax.Bilinear(), 2, True),
        (recurrax.ForwardEuler(), 1, True),
        (recurrax.BackwardEuler(), 1, True),
        (recurrax.ForwardEuler(), 2, False),
        (_FlippedBilinear(), 2, False),
    ],
    ids=["bilinear", "forward-euler", "backward-euler", "euler-claimed-2", "flipped-bilinear"],
)
def test_orders_of_convergence(method, order, holds):
    result = proofs.check_convergence_order(method, order, counts=(40, 80, 160), plot=False)
    assert result.passed == holds, result.details


def _off_by_one(layer, x):
    """Wrong: y_k = sum_j K_j u_{k-1-j}, the kernel shifted by one tap."""
    kernel, u = np.asarray(layer.kernel(x.shape[0])), np.asarray(x)
    y = np.zeros_like(u)
    for j in range(1, u.shape[0]):
        y[j:] += u[: u.shape[0] - j] @ kernel[j - 1].T
    return y + np.asarray(layer.D) * u


LTI_LAYERS = [
    lambda k: recurrax.LRU(3, 4, key=k),
    lambda k: recurrax.LRU(3, 4, bidirectional=True, key=k),
    lambda k: recurrax.DiagonalSSM(3, 4, key=k),
    lambda k: recurrax.DiagonalSSM(3, 4, delta="per_feature", conjugate_symmetric=False, key=k),
]


@given(seed=st.integers(0, 2**16), which=st.sampled_from(range(len(LTI_LAYERS))))
def test_scan_equals_convolution(seed, which):
    layer = LTI_LAYERS[which](KEY(seed))
    assert proofs.check_scan_equals_convolution(layer, length=50, seed=seed).passed


def test_off_by_one_convolution_fails():
    layer = recurrax.LRU(3, 4, key=KEY(0))
    assert not proofs.check_scan_equals_convolution(layer, convolve=_off_by_one).passed


@given(seed=st.integers(0, 2**16), which=st.sampled_from(range(3)))
def test_ssm_is_an_lru(seed, which):
    kinds = [
        dict(discretisation=recurrax.Bilinear()),
        dict(delta="per_feature", conjugate_symmetric=False),
        dict(discretisation=recurrax.BackwardEuler(), bidirectional=True),
    ]
    ssm = recurrax.DiagonalSSM(2, 4, key=KEY(seed), **kinds[which])
    assert proofs.check_ssm_to_lru(ssm, length=50, seed=seed).passed


def test_ssm_to_lru_without_the_doubled_readout_fails():
    ssm = recurrax.DiagonalSSM(2, 4, key=KEY(0))  # conjugate-symmetric: C doubled in the LRU

    def forgets_the_factor_two(s):
        lru = s.to_lru()
        return eqx.tree_at(lambda m: (m.C_re, m.C_im), lru, (lru.C_re / 2, lru.C_im / 2))

    assert not proofs.check_ssm_to_lru(ssm, convert=forgets_the_factor_two).passed


def test_dense_diagonalisation_and_a_wrong_basis():
    system = recurrax.glorot_dense_system(8, 2, key=KEY(0))
    assert proofs.check_dense_diagonalisation(system, length=30).passed

    def adjoint_basis(s):
        """Wrong: V^H instead of V^-1 (right only for a normal A)."""
        lam, v = np.linalg.eig(np.asarray(s.A))
        b, c = v.conj().T @ np.asarray(s.B), np.asarray(s.C) @ v
        return recurrax.DiscreteDiagonalSystem(lam, b, c, s.D)

    assert not proofs.check_dense_diagonalisation(system, diagonalise=adjoint_basis).passed


LAYERS = [
    lambda k: recurrax.LRU(2, 3, key=k),
    lambda k: recurrax.DiagonalSSM(2, 3, delta="per_feature", key=k),
    lambda k: recurrax.MinGRU(2, 3, key=k),
    lambda k: recurrax.MinGRU(2, 3, log_space=True, key=k),
    lambda k: recurrax.MinLSTM(2, 3, key=k),
    lambda k: recurrax.MinLSTM(2, 3, log_space=True, key=k),
]


@given(
    seed=st.integers(0, 2**16),
    which=st.sampled_from(range(len(LAYERS))),
    length=st.sampled_from([1, 17]),
)
def test_parallel_sequential_step(seed, which, length):
    layer = LAYERS[which](KEY(seed))
    result = proofs.check_parallel_sequential_step(layer, length=length, seed=seed)
    assert result.passed, result.details


def test_a_step_that_differs_from_the_scan_fails():
    layer = recurrax.LRU(2, 3, key=KEY(0))

    def late_step(layer, h, x_t):
        """Wrong: outputs the previous state's readout."""
        h_new, _ = layer.step(h, x_t)
        return h_new, layer.readout(h[None], x_t[None])[0]

    assert not proofs.check_parallel_sequential_step(layer, step=late_step, length=8).passed


@given(seed=st.integers(0, 2**16), cls=st.sampled_from([recurrax.MinGRU, recurrax.MinLSTM]))
def test_log_space_equals_linear_space(seed, cls):
    assert proofs.check_log_space(cls(2, 3, key=KEY(seed)), length=64, seed=seed).passed


def test_swapped_log_gates_fail():
    def swapped(layer, h0, x):
        """Wrong: log z and log(1 - z) exchanged."""
        log_a, log_b = layer.coefficients(x)
        log_keep = jnp.log(-jnp.expm1(log_a))
        log_b = log_b - jnp.log(-jnp.expm1(log_a)) + log_a
        logs = recurrax.log_linear_recurrence(log_keep, log_b, jnp.log(h0))
        return jnp.exp(logs[-1]), jnp.exp(logs)

    layer = recurrax.MinGRU(2, 3, key=KEY(0))
    assert not proofs.check_log_space(layer, evaluate_log=swapped, length=64).passed


def test_minlstm_normalisation_and_raw_gates():
    layer = recurrax.MinLSTM(3, 4, key=KEY(0))
    assert proofs.check_minlstm_normalisation(layer, length=300, plot=True).passed

    def raw_gates(layer, x):
        """Wrong: f and i without the normalisation f' = f / (f + i)."""
        f = jax.nn.sigmoid(x @ layer.linear_f.weight.T + layer.linear_f.bias[None])
        i = jax.nn.sigmoid(x @ layer.linear_i.weight.T + layer.linear_i.bias[None])
        return f, i

    assert not proofs.check_minlstm_normalisation(layer, gates=raw_gates, length=300).passed


@given(
    seed=st.integers(0, 2**16),
    which=st.sampled_from(range(len(LAYERS))),
    pieces=st.sampled_from([(1,), (5, 5), (16,)]),
)
def test_streaming_layers(seed, which, pieces):
    layer = LAYERS[which](KEY(seed))
    assert proofs.check_streaming(layer, pieces=pieces, length=24, seed=seed).passed


def test_streaming_models():
    lru_model, _ = recurrax.ModelConfig(
        mixer="lru",
        d_model=4,
        depth=2,
        input_size=2,
        state_size=3,
        norm="layer",
        pooling="none",
    ).build(key=KEY(0))
    mingru_model, _ = recurrax.ModelConfig(
        mixer="mingru",
        block="mlp",
        d_model=4,
        depth=1,
        conv_kernel=3,
        vocab_size=5,
        output_size=5,
        norm="rms",
        pooling="mean",
    ).build(key=KEY(1))
    assert proofs.check_streaming([lru_model, mingru_model], pieces=(3,), length=8).passed


def test_log_g_on_the_carried_state_breaks_streaming():
    """A public mistake: a chunked minLSTM taking log_g(h_prev) instead of log(h_prev)."""
    layer = recurrax.MinLSTM(3, 6, log_space=True, key=KEY(0))

    def mistaken_scan(layer, h, x):
        log_a, log_b = layer.coefficients(x)
        log_h = recurrax.log_linear_recurrence(log_a, log_b, recurrax.log_g(h))
        return jnp.exp(log_h[-1]), jnp.exp(log_h)

    assert proofs.check_streaming(layer, pieces=(8,), length=16).passed
    wrong = proofs.check_streaming(layer, scan=mistaken_scan, pieces=(8,), length=16)
    assert not wrong.passed and wrong.statistic > 1e-3
