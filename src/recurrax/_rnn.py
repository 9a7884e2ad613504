r"""Classic GRU and LSTM over time: the nonlinear baselines of the minRNN comparison."""

import functools
import math
from typing import ClassVar

import equinox as eqx
import jax
import jax.lax as lax
import jax.nn as jnn
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from ._checks import check_positive_int
from ._dtypes import as_working, default_float, working_dtype
from ._mixer import AbstractMixer, check_mask, check_resets
from ._nonlinear import AbstractNonlinearSolver, nonlinear_recurrence, Sequential, SOLVERS
from ._recurrence import segment_cuts
from ._registry import register_mixer
from ._validate import check_array, check_bool, check_real_floating, check_state


def _check_sizes(owner, input_size, hidden_size):
    check_positive_int(owner, "input_size", input_size)
    check_positive_int(owner, "hidden_size", hidden_size)


def _uniform(key, shape, bound, dtype):
    return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)


def _run(owner, cell, weight_hh, state, x, gi, reverse, mask, output, resets=None, initial=None):
    """The sequential loop shared by GRU and LSTM: masked steps keep the state and output
    zeros; at a segment start (`resets`) the carry is replaced by `initial` (in reverse, at
    each segment's last step); the recurrence runs in the working dtype, the outputs in the
    dtype of `x`."""
    check_mask(owner, mask, x.shape[0])
    check_resets(owner, resets, x.shape[0])
    gi = as_working(gi)
    w_hh = as_working(weight_hh)
    if mask is None:
        mask = jnp.ones((x.shape[0],), jnp.bool_)
    if resets is None:
        cuts = jnp.zeros((x.shape[0],), jnp.bool_)
    else:
        cuts = segment_cuts(resets, reverse)

    def body(state, inputs):
        gi_t, m_t, cut_t = inputs
        if initial is not None:
            state = jax.tree.map(lambda i, s: jnp.where(cut_t, i, s), initial, state)
        new = cell(w_hh, state, gi_t)
        y = output(new)
        state = jax.tree.map(lambda n, o: jnp.where(m_t, n, o), new, state)
        return state, jnp.where(m_t, y, jnp.zeros((), y.dtype)).astype(x.dtype)

    return lax.scan(body, state, (gi, mask, cuts), reverse=reverse)


def _check_solver(owner, solver):
    if solver is None:
        return Sequential()
    if not isinstance(solver, AbstractNonlinearSolver):
        raise ValueError(
            f"{owner}: `solver` must be a nonlinear solver such as recurrax.QuasiDEER(), got "
            f"solver={solver!r}."
        )
    return solver


def _run_solver(
    owner, solver, cell, diagonal, weight_hh, state, x, gi, reverse, mask, output, resets=None,
    initial=None,
):
    """`_run` by a parallel nonlinear solver: the state is one vector (GRU: h; LSTM: h and c
    concatenated); masked steps keep the state, with a diagonal of ones; `reverse` flips
    time. At a segment cut (`resets`) the step is taken from `initial` instead of the carried
    state, so its Jacobian with respect to that state is zero: the Newton iterations, and the
    adjoint of the gradients, cut there as the sequential loop does. Returns
    `(final state, outputs, stats)`."""
    check_mask(owner, mask, x.shape[0])
    check_resets(owner, resets, x.shape[0])
    gi = as_working(gi)
    w_hh = as_working(weight_hh)
    length = x.shape[0]
    valid = jnp.ones((length,), jnp.bool_) if mask is None else mask
    cuts = jnp.zeros((length,), jnp.bool_) if resets is None else segment_cuts(resets, reverse)
    if reverse:
        gi, valid, cuts = gi[::-1], valid[::-1], cuts[::-1]
    if mask is None and resets is None:
        f = lambda h, gi_t: cell(w_hh, h, gi_t)  # noqa: E731
        diag = lambda h, gi_t: diagonal(w_hh, h, gi_t)  # noqa: E731
        inputs = gi
    else:
        restart = jnp.zeros_like(state) if initial is None else initial

        def f(h, inputs):
            gi_t, m_t, cut_t = inputs
            h = jnp.where(cut_t, restart, h)
            return jnp.where(m_t, cell(w_hh, h, gi_t), h)

        def diag(h, inputs):
            gi_t, m_t, cut_t = inputs
            h = jnp.where(cut_t, restart, h)
            d = jnp.where(m_t, diagonal(w_hh, h, gi_t), jnp.ones((), h.dtype))
            return jnp.where(cut_t, jnp.zeros((), h.dtype), d)

        inputs = (gi, valid, cuts)
    states, stats = nonlinear_recurrence(f, inputs, state, solver=solver, diagonal=diag)
    last = states[-1] if states.shape[0] else state
    y = jax.vmap(output)(states)
    if mask is not None:
        y = jnp.where(valid[:, None], y, jnp.zeros((), y.dtype))
    y = y.astype(x.dtype)
    return last, (y[::-1] if reverse else y), stats


def _check_input(owner, x, input_size, per_step):
    ndim, expected = (1, "(input_size,)") if per_step else (2, "(length, input_size)")
    name = "x_t" if per_step else "x"
    check_array(owner, name, x)
    if x.ndim != ndim or x.shape[-1] != input_size:
        raise ValueError(
            f"{owner}: `{name}` must have shape {expected} with input_size={input_size}, got "
            f"shape {tuple(x.shape)}."
        )
    check_real_floating(owner, name, x)


def _check_scan(mixer, name, state, reverse):
    """The carried state shaped like `init_state()`, and a bool `reverse`."""
    owner = type(mixer).__name__
    check_bool(owner, "reverse", reverse)
    check_state(owner, name, state, jax.eval_shape(mixer.init_state))


class GRU(AbstractMixer):
    r"""A classic GRU run over time (the layout and equations of `equinox.nn.GRUCell`):

    $$r = \sigma(W_{ir} x + b_r + W_{hr} h),\quad z = \sigma(W_{iz} x + b_z + W_{hz} h),$$

    $$n = \tanh(W_{in} x + b_n + r \odot (W_{hn} h + b_{hn})),\quad h' = n + z \odot (h - n).$$

    The input projections of all time steps are computed at once before the sequential
    loop (only $W_h h$ is inside it). Same call convention as every recurrax layer
    (`step`, `scan`, `__call__`, `init_state`); $y_t = h_t$.

    **Fields:** `weight_ih` `(3 hidden, input)`, `weight_hh` `(3 hidden, hidden)`, `bias`
    `(3 hidden,)`, `bias_n` `(hidden,)`: $3 d_h (d_x + d_h) + 4 d_h$ parameters.

    **Solvers:** `solver=` chooses how the recurrence is evaluated over time:
    [`recurrax.Sequential`][] (default: `jax.lax.scan`), or in parallel by Newton's method,
    [`recurrax.QuasiDEER`][], [`recurrax.DampedQuasiDEER`][] (the Jacobian diagonal in
    closed form) or [`recurrax.DEER`][] (dense Jacobians; small widths). Same states and
    gradients; see [nonlinear recurrences](../concepts/nonlinear.md).

    !!! example

        ```python
        import jax
        import jax.numpy as jnp
        import recurrax

        key = jax.random.key(0)
        x = jax.random.normal(key, (32, 3))
        gru = recurrax.GRU(3, 8, key=key)
        fast = recurrax.GRU(3, 8, solver=recurrax.QuasiDEER(), key=key)
        assert jnp.allclose(gru(x), fast(x), atol=1e-4)
        ```
    """

    no_weight_decay: ClassVar[bool] = True

    weight_ih: Float[Array, "gates input"]
    weight_hh: Float[Array, "gates hidden"]
    bias: Float[Array, " gates"]
    bias_n: Float[Array, " hidden"]
    input_size: int = eqx.field(static=True)
    hidden_size: int = eqx.field(static=True)
    solver: AbstractNonlinearSolver = eqx.field(static=True)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        solver: AbstractNonlinearSolver | None = None,
        dtype=None,
        key: PRNGKeyArray,
    ):
        """Uniform $(-1/\\sqrt{d_h}, 1/\\sqrt{d_h})$ initialisation (as PyTorch and Equinox);
        `solver` defaults to [`recurrax.Sequential`][].

        **Raises:** `ValueError` naming a non-positive size or a `solver` that is not one."""
        _check_sizes("GRU", input_size, hidden_size)
        self.solver = _check_solver("GRU", solver)
        dtype = default_float(dtype)
        bound = 1 / math.sqrt(hidden_size)
        k1, k2, k3, k4 = jax.random.split(key, 4)
        h = hidden_size
        self.weight_ih = _uniform(k1, (3 * h, input_size), bound, dtype)
        self.weight_hh = _uniform(k2, (3 * h, h), bound, dtype)
        self.bias = _uniform(k3, (3 * h,), bound, dtype)
        self.bias_n = _uniform(k4, (h,), bound, dtype)
        self.input_size, self.hidden_size = input_size, hidden_size

    @property
    def output_size(self) -> int:
        return self.hidden_size

    @property
    def bidirectional(self) -> bool:
        return False

    def init_state(self) -> Float[Array, " hidden"]:
        """Zeros, `(hidden_size,)`, in the working dtype (float32 for a 16-bit layer)."""
        return jnp.zeros((self.hidden_size,), working_dtype(self.weight_hh.dtype))

    def _cell(self, w_hh, h, gi):
        gh = w_hh @ h
        i_r, i_z, i_n = jnp.split(gi, 3)
        h_r, h_z, h_n = jnp.split(gh, 3)
        r = jnn.sigmoid(i_r + h_r)
        z = jnn.sigmoid(i_z + h_z)
        n = jnn.tanh(i_n + r * (h_n + as_working(self.bias_n)))
        return n + z * (h - n)

    def step(
        self, h: Float[Array, " hidden"], x_t: Float[Array, " input"]
    ) -> tuple[Float[Array, " hidden"], Float[Array, " hidden"]]:
        """One step: `(h, x_t) -> (h', h')`."""
        _check_input("GRU", x_t, self.input_size, per_step=True)
        h, y = self.scan(h, x_t[None])
        return h, y[0]

    def scan(
        self,
        h: Float[Array, " hidden"],
        x: Float[Array, "length input"],
        *,
        reverse: bool = False,
        mask: Bool[Array, " length"] | None = None,
        resets: Bool[Array, " length"] | None = None,
    ) -> tuple[Float[Array, " hidden"], Float[Array, "length hidden"]]:
        """`jax.lax.scan(lambda h, x_t: self.step(h, x_t), h, x, reverse=reverse)`, with the
        input projections hoisted out of the loop; masked steps keep the state and output
        zeros; at each segment start of `resets` the state is reset to `init_state()`."""
        _check_input("GRU", x, self.input_size, per_step=False)
        _check_scan(self, "h", h, reverse)
        h = as_working(h)
        gi = x @ self.weight_ih.T + self.bias[None]
        if isinstance(self.solver, Sequential):
            initial = None if resets is None else self.init_state()
            return _run(
                "GRU", self._cell, self.weight_hh, h, x, gi, reverse, mask, lambda h: h, resets,
                initial,
            )
        return self._solve(h, x, gi, reverse, mask, resets)[:2]

    def _solve(self, h, x, gi, reverse, mask, resets=None):
        args = (self.weight_hh, h, x, gi, reverse, mask, lambda h: h)
        initial = None if resets is None else as_working(self.init_state())
        return _run_solver(
            "GRU", self.solver, self._cell, self._diagonal, *args, resets=resets, initial=initial
        )

    def _diagonal(self, w_hh, h, gi):
        r"""The diagonal of $\partial h' / \partial h$ in closed form:
        $z + (h - n)\,z(1-z)\,W_{hz,jj} + (1-z)(1-n^2)\,[r(1-r)\,W_{hr,jj}(W_{hn} h + b_{hn})
        + r\,W_{hn,jj}]$."""
        size = self.hidden_size
        d_r, d_z, d_n = jnp.diagonal(w_hh.reshape(3, size, size), axis1=1, axis2=2)
        i_r, i_z, i_n = jnp.split(gi, 3)
        h_r, h_z, h_n = jnp.split(w_hh @ h, 3)
        r = jnn.sigmoid(i_r + h_r)
        z = jnn.sigmoid(i_z + h_z)
        h_n = h_n + as_working(self.bias_n)
        n = jnn.tanh(i_n + r * h_n)
        dn = (1 - n * n) * (r * (1 - r) * d_r * h_n + r * d_n)
        return z + (h - n) * z * (1 - z) * d_z + (1 - z) * dn

    def solver_stats(
        self, x: Float[Array, "length input"], *, mask: Bool[Array, " length"] | None = None
    ) -> dict[str, Array]:
        """The statistics of `self.solver` on `x` from `init_state()`: `{"iterations",
        "converged"}` as returned by [`recurrax.nonlinear_recurrence`][]."""
        _check_input("GRU", x, self.input_size, per_step=False)
        gi = x @ self.weight_ih.T + self.bias[None]
        return self._solve(self.init_state(), x, gi, False, mask)[2]

    def __call__(
        self,
        x: Float[Array, "length input"],
        *,
        mask: Bool[Array, " length"] | None = None,
        resets: Bool[Array, " length"] | None = None,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "length hidden"]:
        """All hidden states from zeros, `(length, hidden_size)`; each segment of `resets`
        starts from zeros again."""
        return self.scan(self.init_state(), x, mask=mask, resets=resets)[1]


class LSTM(AbstractMixer):
    r"""A classic LSTM run over time (the layout and equations of `equinox.nn.LSTMCell`):

    $$[i, f, g, o] = W_i x + W_h h + b,$$

    $$c' = \sigma(f) \odot c + \sigma(i) \odot \tanh(g),\quad h' = \sigma(o) \odot \tanh(c').$$

    The state is the pair `(h, c)`; $y_t = h_t$. Input projections are hoisted out of the
    sequential loop. Same call convention as every recurrax layer.

    **Fields:** `weight_ih` `(4 hidden, input)`, `weight_hh` `(4 hidden, hidden)`, `bias`
    `(4 hidden,)`: $4 d_h (d_x + d_h) + 4 d_h$ parameters.

    !!! example

        ```python
        import jax
        import recurrax

        lstm = recurrax.LSTM(3, 8, key=jax.random.key(0))
        x = jax.random.normal(jax.random.key(1), (20, 3))       # (length, input)
        y = lstm(x)                                             # (20, 8)
        (h, c), y_t = lstm.step(lstm.init_state(), x[0])        # the state is the pair (h, c)
        ```
    """

    no_weight_decay: ClassVar[bool] = True

    weight_ih: Float[Array, "gates input"]
    weight_hh: Float[Array, "gates hidden"]
    bias: Float[Array, " gates"]
    input_size: int = eqx.field(static=True)
    hidden_size: int = eqx.field(static=True)
    solver: AbstractNonlinearSolver = eqx.field(static=True)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        solver: AbstractNonlinearSolver | None = None,
        dtype=None,
        key: PRNGKeyArray,
    ):
        """Uniform $(-1/\\sqrt{d_h}, 1/\\sqrt{d_h})$ initialisation (as PyTorch and Equinox);
        `solver` defaults to [`recurrax.Sequential`][].

        **Raises:** `ValueError` naming a non-positive size or a `solver` that is not one."""
        _check_sizes("LSTM", input_size, hidden_size)
        self.solver = _check_solver("LSTM", solver)
        dtype = default_float(dtype)
        bound = 1 / math.sqrt(hidden_size)
        k1, k2, k3 = jax.random.split(key, 3)
        h = hidden_size
        self.weight_ih = _uniform(k1, (4 * h, input_size), bound, dtype)
        self.weight_hh = _uniform(k2, (4 * h, h), bound, dtype)
        self.bias = _uniform(k3, (4 * h,), bound, dtype)
        self.input_size, self.hidden_size = input_size, hidden_size

    @property
    def output_size(self) -> int:
        return self.hidden_size

    @property
    def bidirectional(self) -> bool:
        return False

    def init_state(self) -> tuple[Float[Array, " hidden"], Float[Array, " hidden"]]:
        """`(h, c)`, zeros, each `(hidden_size,)`, in the working dtype."""
        zeros = jnp.zeros((self.hidden_size,), working_dtype(self.weight_hh.dtype))
        return zeros, zeros

    def _cell(self, w_hh, state, gi):
        h, c = state
        i, f, g, o = jnp.split(gi + w_hh @ h, 4)
        c = jnn.sigmoid(f) * c + jnn.sigmoid(i) * jnn.tanh(g)
        h = jnn.sigmoid(o) * jnn.tanh(c)
        return h, c

    def step(
        self,
        state: tuple[Float[Array, " hidden"], Float[Array, " hidden"]],
        x_t: Float[Array, " input"],
    ) -> tuple[tuple[Float[Array, " hidden"], Float[Array, " hidden"]], Float[Array, " hidden"]]:
        """One step: `((h, c), x_t) -> ((h', c'), h')`."""
        _check_input("LSTM", x_t, self.input_size, per_step=True)
        state, y = self.scan(state, x_t[None])
        return state, y[0]

    def scan(
        self,
        state: tuple[Float[Array, " hidden"], Float[Array, " hidden"]],
        x: Float[Array, "length input"],
        *,
        reverse: bool = False,
        mask: Bool[Array, " length"] | None = None,
        resets: Bool[Array, " length"] | None = None,
    ) -> tuple[
        tuple[Float[Array, " hidden"], Float[Array, " hidden"]], Float[Array, "length hidden"]
    ]:
        """`jax.lax.scan(lambda s, x_t: self.step(s, x_t), state, x, reverse=reverse)`, with
        the input projections hoisted out of the loop; masked steps keep the state and output
        zeros; at each segment start of `resets` the state is reset to `init_state()`."""
        _check_input("LSTM", x, self.input_size, per_step=False)
        _check_scan(self, "state", state, reverse)
        state = (as_working(state[0]), as_working(state[1]))
        gi = x @ self.weight_ih.T + self.bias[None]
        if isinstance(self.solver, Sequential):
            initial = None if resets is None else self.init_state()
            return _run(
                "LSTM", self._cell, self.weight_hh, state, x, gi, reverse, mask, lambda s: s[0],
                resets, initial,
            )
        last, y, _ = self._solve(state, x, gi, reverse, mask, resets)
        return (last[: self.hidden_size], last[self.hidden_size :]), y

    def _solve(self, state, x, gi, reverse, mask, resets=None):
        """The parallel solve on the packed state `concatenate([h, c])`."""

        def cell(w_hh, z, gi_t):
            h, c = self._cell(w_hh, jnp.split(z, 2), gi_t)
            return jnp.concatenate([h, c])

        def output(z):
            return z[: self.hidden_size]

        z = jnp.concatenate(state)
        args = (self.weight_hh, z, x, gi, reverse, mask, output)
        initial = None if resets is None else as_working(jnp.concatenate(self.init_state()))
        return _run_solver(
            "LSTM", self.solver, cell, self._diagonal, *args, resets=resets, initial=initial
        )

    def _diagonal(self, w_hh, z, gi):
        r"""The diagonal of the Jacobian of $(h', c')$ with respect to $(h, c)$ in closed form:
        $\partial c'_j/\partial c_j = \sigma(f_j)$ and
        $\partial h'_j/\partial h_j = \sigma'(o_j) W_{o,jj} \tanh c'_j + \sigma(o_j)(1 -
        \tanh^2 c'_j)\,[\sigma'(f_j) W_{f,jj} c_j + \sigma'(i_j) W_{i,jj} \tanh g_j +
        \sigma(i_j)(1 - \tanh^2 g_j) W_{g,jj}]$."""
        size = self.hidden_size
        h, c = jnp.split(z, 2)
        d_i, d_f, d_g, d_o = jnp.diagonal(w_hh.reshape(4, size, size), axis1=1, axis2=2)
        i, f, g, o = jnp.split(gi + w_hh @ h, 4)
        si, sf, so, tg = jnn.sigmoid(i), jnn.sigmoid(f), jnn.sigmoid(o), jnn.tanh(g)
        c_new = sf * c + si * tg
        tc = jnn.tanh(c_new)
        dc_dh = sf * (1 - sf) * d_f * c + si * (1 - si) * d_i * tg + si * (1 - tg * tg) * d_g
        dh_dh = so * (1 - so) * d_o * tc + so * (1 - tc * tc) * dc_dh
        return jnp.concatenate([dh_dh, sf])

    def solver_stats(
        self, x: Float[Array, "length input"], *, mask: Bool[Array, " length"] | None = None
    ) -> dict[str, Array]:
        """The statistics of `self.solver` on `x` from `init_state()`: `{"iterations",
        "converged"}` as returned by [`recurrax.nonlinear_recurrence`][]."""
        _check_input("LSTM", x, self.input_size, per_step=False)
        gi = x @ self.weight_ih.T + self.bias[None]
        return self._solve(self.init_state(), x, gi, False, mask)[2]

    def __call__(
        self,
        x: Float[Array, "length input"],
        *,
        mask: Bool[Array, " length"] | None = None,
        resets: Bool[Array, " length"] | None = None,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "length hidden"]:
        """All hidden states from zeros, `(length, hidden_size)`; each segment of `resets`
        starts from zeros again."""
        return self.scan(self.init_state(), x, mask=mask, resets=resets)[1]


def _build(cls, width, hidden, state_size, *, dtype, key, **options):
    """A GRU or LSTM block mixer: `width -> hidden`."""
    return cls(width, hidden, dtype=dtype, key=key, **options)


for _name, _cls in (("gru", GRU), ("lstm", LSTM)):
    register_mixer(
        _name,
        _cls,
        functools.partial(_build, _cls),
        summary=f"the classic {_cls.__name__} (sequential, or Newton's method over time with "
        f"`solver`)",
        scan_strategy=False,
        choices={"solver": SOLVERS},
    )
