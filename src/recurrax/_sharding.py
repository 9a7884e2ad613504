r"""Data-parallel placement: the data mesh, sharded batches and replicated models, on one
process or across processes (`jax.distributed`)."""

from collections.abc import Collection

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import PyTree


# -- data parallel ----------------------------------------------------------------------------

DATA_AXIS = "data"
SEQ_AXIS = "seq"


def _batch_sharding(mesh: Mesh, x) -> NamedSharding:
    """`("data",)` for a batch array; `("data", "seq")` for a `(batch, time, ...)` array on a
    mesh with a `"seq"` axis that divides its second axis (sequence parallelism)."""
    shape = np.shape(x)
    if SEQ_AXIS in mesh.axis_names and len(shape) >= 2 and shape[1] % mesh.shape[SEQ_AXIS] == 0:
        return NamedSharding(mesh, PartitionSpec(DATA_AXIS, SEQ_AXIS))
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def make_data_mesh(devices: Collection[jax.Device] | None = None) -> Mesh:
    r"""A 1-D device mesh with the axis name `"data"`.

    **Arguments:**

    - `devices`: the devices, by default `jax.devices()` (every device of every process: in
        a single process, the local devices).

    **Returns:**

    A `jax.sharding.Mesh` of shape `{"data": len(devices)}`.

    **Raises:**

    `ValueError` if `devices` is empty.

    !!! example

        ```python
        import recurrax

        mesh = recurrax.make_data_mesh()                         # every device, axis "data"
        print(mesh.axis_names)                                   # ('data',)
        ```
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("make_data_mesh: `devices` must not be empty, got devices=[].")
    return Mesh(np.array(devices), (DATA_AXIS,))


def _data_size(owner: str, mesh: Mesh) -> int:
    if DATA_AXIS not in mesh.axis_names:
        raise ValueError(
            f"{owner}: the mesh needs an axis named {DATA_AXIS!r} (see make_data_mesh), got "
            f"axis names {tuple(mesh.axis_names)}."
        )
    return int(mesh.shape[DATA_AXIS])


def _check_batch(owner: str, batch, devices: int) -> None:
    leaves = jax.tree_util.tree_leaves_with_path(batch)
    for path, leaf in leaves:
        if not eqx.is_array(leaf):
            continue
        where = "batch" + jax.tree_util.keystr(path)
        if np.ndim(leaf) == 0:
            raise ValueError(
                f"{owner}: every array of the batch needs a leading batch axis, got a scalar "
                f"at {where}."
            )
        size = np.shape(leaf)[0]
        if size % devices:
            raise ValueError(
                f"{owner}: the batch size must be divisible by the number of devices on the "
                f"'data' axis ({devices}), got batch size {size} at {where} (shape "
                f"{tuple(np.shape(leaf))})."
            )


def _spans_processes(mesh: Mesh) -> bool:
    """Whether `mesh` holds devices of several processes (multi-host, after
    `jax.distributed.initialize`)."""
    here = jax.process_index()
    return any(d.process_index != here for d in mesh.devices.flat)


def _local_size(mesh: Mesh) -> int:
    """The devices of this process along the `"data"` axis (its share of the batch)."""
    axis = mesh.axis_names.index(DATA_AXIS)
    here = jax.process_index()
    rows = np.moveaxis(mesh.devices, axis, 0).reshape(mesh.devices.shape[axis], -1)
    return sum(any(d.process_index == here for d in row) for row in rows)


def _to_global(x, sharding: NamedSharding):
    """A global array with `sharding` from this process's part of it (the whole array when
    `sharding` replicates it). A global array already is kept."""
    if isinstance(x, jax.Array) and (x.sharding == sharding or not x.is_fully_addressable):
        return x
    if jnp.issubdtype(jnp.result_type(x), jax.dtypes.prng_key):
        data = _to_global(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    return jax.make_array_from_process_local_data(sharding, np.asarray(x))


def _local(x) -> bool:
    return eqx.is_array(x) and not (isinstance(x, jax.Array) and not x.is_fully_addressable)


def shard_batch(batch: PyTree, mesh: Mesh) -> PyTree:
    r"""Place a batch on the mesh, split along its leading (batch) axis over `"data"`:
    `NamedSharding(mesh, PartitionSpec("data"))` for every array leaf.

    When the mesh spans several processes (multi-host), each process passes its own share
    of the global batch (its rows; the shares are concatenated in process order) and gets
    the global arrays, built with `jax.make_array_from_process_local_data`.

    **Arguments:**

    - `batch`: a pytree of arrays whose leading axes are the batch, or this process's share
        of it (non-array leaves are kept as they are; global arrays too).
    - `mesh`: from [`recurrax.make_data_mesh`][], or a 2-D mesh with axes `"data"` and
        `"seq"`: arrays of two or more axes `(batch, time, ...)` are then split over both
        (the time axis over `"seq"`, for [`recurrax.SequenceParallelScan`][]) when `"seq"`
        divides their length.

    **Returns:**

    The batch as global `jax.Array`s, each device holding `batch_size / devices` examples.

    **Raises:**

    `ValueError` if an array has no leading axis or a batch size not divisible by the number
    of devices (of this process, on a mesh spanning several processes).

    !!! example

        ```python
        import jax.numpy as jnp
        import recurrax

        mesh = recurrax.make_data_mesh()
        n = mesh.shape["data"]
        batch = recurrax.shard_batch((jnp.ones((2 * n, 5)), jnp.zeros(2 * n)), mesh)
        print(batch[0].sharding.spec)                            # P('data',)
        ```
    """
    owner = "shard_batch"
    devices = _data_size(owner, mesh)
    if _spans_processes(mesh):
        _check_batch(
            owner, jax.tree.map(lambda x: x if _local(x) else None, batch), _local_size(mesh)
        )
        place = _to_global
    else:
        _check_batch(owner, batch, devices)
        place = jax.device_put
    return jax.tree.map(
        lambda x: place(x, _batch_sharding(mesh, x)) if eqx.is_array(x) else x, batch
    )


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    r"""Copy every array of a pytree (a model, an optimiser state, a key) to every device of
    the mesh: `NamedSharding(mesh, PartitionSpec())`. Non-array leaves are kept.

    On a mesh spanning several processes every process must pass the same values (a model
    built from the same seed, or read from the same checkpoint); global arrays are kept.

    !!! example

        ```python
        import jax
        import recurrax

        mesh = recurrax.make_data_mesh()
        model = recurrax.replicate(recurrax.MinGRU(2, 4, key=jax.random.key(0)), mesh)
        assert model.linear_z.weight.sharding.is_fully_replicated
        ```
    """
    sharding = NamedSharding(mesh, PartitionSpec())
    if _spans_processes(mesh):
        return jax.tree.map(lambda x: _to_global(x, sharding) if eqx.is_array(x) else x, tree)
    return jax.tree.map(lambda x: jax.device_put(x, sharding) if eqx.is_array(x) else x, tree)
