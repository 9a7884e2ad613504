r"""Sequence (context) parallelism: a scan strategy for inputs whose time axis is split over a
device mesh.

Time is cut into one block per device along a mesh axis. Each device solves its own block
from a zero state with an inner strategy and keeps two summaries: the block's coefficient
product $A_p$ and its last state $e_p$. Only these summaries cross devices (an all-gather of
$O(P \cdot \text{state})$ numbers); every device composes them into the state entering its
block, $h^{\text{in}}_{p+1} = A_p \otimes h^{\text{in}}_p \oplus e_p$ with
$h^{\text{in}}_0 = h_0$, and corrects its block in place,
$h_t \mathrel{\oplus}= (\bigotimes_{s \le t} a_s) \otimes h^{\text{in}}_p$. The reverse
direction is the mirror image, so derivatives (which the engine obtains by solving the
reverse recurrence with the same strategy) run the same algorithm backwards.
"""

import equinox as eqx
import jax
import jax.lax as lax
from jax.sharding import AxisType, Mesh, PartitionSpec
from jaxtyping import Array

from ._scan import _time_invariant, AbstractScan, AutoScan
from ._semiring import AbstractSemiring


def entering_states(
    semiring: AbstractSemiring, products: Array, ends: Array, h0: Array, *, reverse: bool
) -> Array:
    r"""The state entering each of $P$ consecutive blocks from their summaries.

    Block $p$ maps an entering state $h$ to $A_p \otimes h \oplus e_p$ (`products[p]`,
    `ends[p]`). Returns `(P, *state)`: $h_0$ for the first block processed, and for every
    other the composition of all blocks before it. A block whose recurrence restarts inside
    it (a reset) has $A_p$ equal to the semiring's zero and so passes on only its own $e_p$.
    """

    def step(h, summary):
        product, end = summary
        return semiring.combine(product, h, end), h

    _, starts = lax.scan(step, h0, (products, ends), reverse=reverse)
    return starts


class SequenceParallelScan(AbstractScan):
    r"""Sequence parallelism: the time axis split over the devices of one mesh axis.

    Each of the $P$ devices along `axis_name` holds a block of $L / P$ consecutive time steps.
    It solves its block from a zero state with `inner`, keeping the block's coefficient
    product and final state; the devices exchange only these two summaries (an all-gather of
    $2P$ states, never the sequence), compose them into the state entering each block, and
    each corrects its own block, $h_t \mathrel{+}= (\prod_{s \le t} a_s)\, h^{\text{in}}$
    (log space: $\operatorname{logaddexp}$ and sums). Per device the work is about two inner
    solves of $L / P$ steps; the communication is independent of $L$.

    Use it as `method=` of [`recurrax.linear_recurrence`][],
    [`recurrax.log_linear_recurrence`][] and every layer, under `jax.jit`, on inputs whose
    time axis is sharded over `axis_name` (other inputs are resharded to it). Works with
    meshes from `jax.make_mesh` (explicit axes) and classic `jax.sharding.Mesh`es; the
    other axes of the mesh (e.g. a `"data"` axis for the batch) are left to the compiler.
    Both directions, linear and log space, an initial state and all derivatives are
    supported (the engine differentiates by solving the reverse recurrence, which this
    strategy also splits).

    **Arguments:**

    - `mesh`: the device mesh.
    - `axis_name`: the mesh axis the time axis is split over.
    - `inner`: the strategy each device uses on its block; `None` means
        [`recurrax.AutoScan`][] (which chooses by the block's length).

    **Raises:**

    `ValueError` if `axis_name` is not an axis of `mesh`, if `inner` is not a single-device
    strategy, or (when solving) if the length is not divisible by the number of devices
    along `axis_name`.

    !!! example

        ```python
        import jax
        import jax.numpy as jnp
        import recurrax

        mesh = jax.make_mesh((len(jax.devices()),), ("seq",))
        method = recurrax.SequenceParallelScan(mesh, "seq")
        lam = jnp.array([0.9, 0.5])
        b = jnp.ones((8, 2))
        h = jax.jit(lambda b: recurrax.linear_recurrence(lam, b, method=method))(b)
        assert jnp.allclose(h, recurrax.linear_recurrence(lam, b), atol=1e-6)
        ```
    """

    mesh: Mesh = eqx.field(static=True)
    axis_name: str = eqx.field(default="seq", static=True)
    inner: AbstractScan | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        if not isinstance(self.mesh, Mesh):
            raise ValueError(
                f"SequenceParallelScan: `mesh` must be a jax.sharding.Mesh (e.g. from "
                f"jax.make_mesh), got mesh={self.mesh!r}."
            )
        if self.axis_name not in self.mesh.axis_names:
            raise ValueError(
                f"SequenceParallelScan: `axis_name` must be an axis of the mesh "
                f"{tuple(self.mesh.axis_names)}, got axis_name={self.axis_name!r}."
            )
        if self.inner is not None and (
            not isinstance(self.inner, AbstractScan) or isinstance(self.inner, SequenceParallelScan)
        ):
            raise ValueError(
                f"SequenceParallelScan: `inner` must be a single-device scan strategy such as "
                f"recurrax.ChunkedScan() or None, got inner={self.inner!r}."
            )

    @property
    def devices(self) -> int:
        """The number of blocks: devices along `axis_name`."""
        return int(self.mesh.shape[self.axis_name])

    def solve(self, semiring, a, b, h0, *, reverse):
        length = b.shape[0]
        if length % self.devices:
            raise ValueError(
                f"SequenceParallelScan: the length {length} must be divisible by the "
                f"{self.devices} devices along mesh axis {self.axis_name!r}."
            )
        inner = AutoScan() if self.inner is None else self.inner
        invariant = _time_invariant(a, b)
        name = self.axis_name
        state_shape = b.shape[1:]

        def block(a, b, h0):
            # 1. This block from a zero state, and its running coefficient products (the
            # same recurrence with no input, from the coefficient one).
            zero = semiring.zero(state_shape, b.dtype)
            local = inner.solve(semiring, a, b, zero, reverse=reverse)
            empty = semiring.zero(b.shape, a.dtype)
            running = inner.solve(
                semiring, a, empty, semiring.one(state_shape, a.dtype), reverse=reverse
            )
            last = 0 if reverse else -1
            # 2. The summaries of every block: O(devices x state) numbers.
            products = lax.all_gather(running[last], name)
            ends = lax.all_gather(local[last], name)
            starts = entering_states(semiring, products, ends, h0, reverse=reverse)
            h_in = lax.dynamic_index_in_dim(starts, lax.axis_index(name), keepdims=True)
            # 3. The correction: h_t = (prod_{s<=t} a_s) h_in + h_t(from zero).
            return semiring.combine(running, h_in, local)

        time = PartitionSpec(name)
        # Inside the engine, explicit mesh axes have been made automatic (the context mesh);
        # outside any mesh context, use this mesh with automatic axes, so that inputs not
        # yet split over `axis_name` are resharded by the compiler.
        mesh = jax.sharding.get_abstract_mesh()
        if mesh.empty:
            names = self.mesh.axis_names
            mesh = Mesh(self.mesh.devices, names, axis_types=(AxisType.Auto,) * len(names))
        return jax.shard_map(
            block,
            mesh=mesh,
            in_specs=(PartitionSpec() if invariant else time, time, PartitionSpec()),
            out_specs=time,
            axis_names={name},
            check_vma=False,
        )(a, b, h0)
