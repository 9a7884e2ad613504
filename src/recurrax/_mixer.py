r"""The mixer interface: what a block needs from a sequence layer.

Every recurrent layer of recurrax ([`recurrax.LRU`][], [`recurrax.DiagonalSSM`][],
[`recurrax.MinGRU`][], [`recurrax.MinLSTM`][], [`recurrax.GRU`][], [`recurrax.LSTM`][], the
[`recurrax.Bidirectional`][] wrapper) is an [`recurrax.AbstractMixer`][], so any of them drops
into a block.
"""

import abc
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray, PyTree


class AbstractMixer(eqx.Module):
    r"""Abstract base class of a sequence mixer: a layer mapping `(length, input_size)` to
    `(length, output_size)`, causal unless `bidirectional`.

    The call convention is that of `jax.lax.scan`, for one example (`jax.vmap` for batches):

    - `mixer.init_state()`: the carried state before the first step (any pytree);
    - `mixer.step(h, x_t) -> (h, y_t)`: one time step;
    - `mixer.scan(h, x, *, reverse=False, mask=None, resets=None) -> (h_last, y)`: a whole
        sequence from a carried state, equal to stepping through it;
    - `mixer(x, *, mask=None, resets=None, key=None) -> y`: a whole sequence from
        `init_state()`.

    **Masks.** `mask` is a boolean `(length,)` marking the steps that exist. A masked step
    leaves the state unchanged and its output is zero, so a padded sequence gives the outputs
    of the unpadded one at every valid position, and a reverse scan starts at each sequence's
    true end. Bidirectional mixers have no `step`/`scan` (their reverse direction needs the
    whole sequence) and raise a `ValueError` there.

    **Resets.** `resets` is a boolean `(length,)`, `True` at the first step of each segment
    of a packed sequence: the state entering such a step is `init_state()` (a reverse scan
    restarts from it at each segment's last step), so every segment gets the outputs it
    would get alone. A reset on a masked step takes effect at the next valid step.

    **Declarations for training and precision** (class variables, read by
    [`recurrax.param_labels`][] and [`recurrax.SequenceModel`][]):

    - `recurrent_fields`: the fields that make the recurrence (eigenvalue parameters, the
        input matrix of an LTI layer): they train at `lr × lr_factor` with no weight decay,
        and the layer's other parameters are ordinary weights. Empty by default.
    - `no_weight_decay`: with no `recurrent_fields`, `True` puts all the layer's parameters in
        the no-decay group (the minimal and classic RNNs). `False` by default.
    - `transition_fields`: the fields that make the transition's eigenvalues, which
        `compute_dtype` leaves in their own dtype. Empty by default.

    !!! example

        ```python
        import jax
        import recurrax

        mixer = recurrax.MinGRU(4, 8, key=jax.random.key(0))     # every layer is a mixer
        assert isinstance(mixer, recurrax.AbstractMixer)
        x = jax.random.normal(jax.random.key(1), (10, 4))
        h, y = mixer.scan(mixer.init_state(), x)                 # the same as mixer(x)
        h, y_next = mixer.step(h, x[0])                          # one more step
        ```
    """

    recurrent_fields: ClassVar[frozenset[str]] = frozenset()
    no_weight_decay: ClassVar[bool] = False
    transition_fields: ClassVar[frozenset[str]] = frozenset()

    input_size: eqx.AbstractVar[int]
    output_size: eqx.AbstractVar[int]
    bidirectional: eqx.AbstractVar[bool]

    @abc.abstractmethod
    def init_state(self) -> PyTree[Array]:
        """The state before the first step."""

    @abc.abstractmethod
    def step(
        self, h: PyTree[Array], x_t: Float[Array, " input"]
    ) -> tuple[PyTree[Array], Float[Array, " output"]]:
        """Advance one step: `(h, x_t) -> (h, y_t)`."""

    @abc.abstractmethod
    def scan(
        self,
        h: PyTree[Array],
        x: Float[Array, "length input"],
        *,
        reverse: bool = False,
        mask: Bool[Array, " length"] | None = None,
        resets: Bool[Array, " length"] | None = None,
    ) -> tuple[PyTree[Array], Float[Array, "length output"]]:
        """Run `x` from the carried state `h`: `(h_last, y)`."""

    @abc.abstractmethod
    def __call__(
        self,
        x: Float[Array, "length input"],
        *,
        mask: Bool[Array, " length"] | None = None,
        resets: Bool[Array, " length"] | None = None,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "length output"]:
        """The outputs for a whole sequence from `init_state()`."""


def check_mask(owner: str, mask, length: int) -> None:
    """A mask must be a boolean `(length,)` array (trace-time check)."""
    if mask is None:
        return
    shape = tuple(jnp.shape(mask))
    dtype = jnp.result_type(mask)
    if shape != (length,) or dtype != jnp.bool_:
        raise ValueError(
            f"{owner}: `mask` must be a boolean array of shape ({length},) matching the "
            f"sequence length, got shape {shape} and dtype {dtype}."
        )


def check_resets(owner: str, resets, length: int) -> None:
    """Reset flags must be a boolean `(length,)` array (trace-time check)."""
    if resets is None:
        return
    shape = tuple(jnp.shape(resets))
    dtype = jnp.result_type(resets)
    if shape != (length,) or dtype != jnp.bool_:
        raise ValueError(
            f"{owner}: `resets` must be a boolean array of shape ({length},), True at the "
            f"first step of each segment, got shape {shape} and dtype {dtype}."
        )


def zero_masked(y: Array, mask) -> Array:
    """Outputs at masked steps set to zero (`y` is `(length, ...)`)."""
    if mask is None:
        return y
    m = mask.reshape(mask.shape + (1,) * (y.ndim - 1))
    return jnp.where(m, y, jnp.zeros((), y.dtype))
