r"""Optimiser parameter groups: which parameters are recurrent, which decay.

The LRU paper (App. D.2) and the minRNN paper: the recurrent parameters of an LRU or a
diagonal SSM ($\nu$, $\theta$, $\gamma$, $B$, and $\Lambda$, $\Delta$) get the learning
rate base $\times$ `lr_factor` and no weight decay; the parameters of the minimal and classic
RNNs get the base learning rate and no weight decay; everything else gets AdamW with weight
decay. Each layer declares its own groups (class variables of `AbstractMixer`).
"""

import dataclasses
from collections.abc import Collection, Mapping

import equinox as eqx
import jax
from jaxtyping import PyTree

from ._mixer import AbstractMixer
from ._registry import registered_mixers


# -- parameter groups -------------------------------------------------------------------------

RECURRENT = "recurrent"
NO_DECAY = "no_decay"
DECAY = "decay"


class _DeclaredRecurrentFields(Mapping):
    """`{layer type: recurrent_fields}` of the registered mixers that declare some, read when
    used (so it follows later registrations)."""

    def _table(self) -> dict[type, frozenset[str]]:
        layers = (spec.layer for spec in registered_mixers().values())
        return {cls: cls.recurrent_fields for cls in layers if cls.recurrent_fields}

    def __getitem__(self, cls):
        return self._table()[cls]

    def __iter__(self):
        return iter(self._table())

    def __len__(self):
        return len(self._table())

    def __repr__(self):
        names = {cls.__name__: sorted(f) for cls, f in self._table().items()}
        return f"RECURRENT_FIELDS({names})"


RECURRENT_FIELDS: Mapping[type, frozenset[str]] = _DeclaredRecurrentFields()
"""The recurrent fields that the registered mixers declare, `{layer type:
layer.recurrent_fields}` (read-only; e.g. [`recurrax.LRU`][]: `nu_log`, `theta_log`,
`gamma_log`, `B_re`, `B_im`). Layers declare their own (the class variable
`recurrent_fields` of [`recurrax.AbstractMixer`][]), and [`recurrax.param_labels`][] reads
the declarations; this table is kept for code written before, e.g.
`recurrent_fields={**RECURRENT_FIELDS, MyLayer: {"a_log"}}`, which still works.

!!! example

    ```python
    import recurrax

    assert "nu_log" in recurrax.RECURRENT_FIELDS[recurrax.LRU]
    assert recurrax.RECURRENT_FIELDS[recurrax.LRU] == recurrax.LRU.recurrent_fields
    ```
"""

NO_DECAY_TYPES: tuple[type, ...] = (eqx.nn.GRUCell, eqx.nn.LSTMCell)
"""Equinox's own recurrent cells, all of whose parameters form the `"no_decay"` group (as the
recurrax mixers that declare `no_weight_decay`: minGRU, minLSTM, GRU, LSTM and every
[`recurrax.AbstractRecurrentLayer`][] without `recurrent_fields`). Extend it for other
layers that cannot declare `no_weight_decay` themselves.

!!! example

    ```python
    import equinox as eqx
    import jax
    import recurrax

    cell = eqx.nn.GRUCell(2, 3, key=jax.random.key(0))
    labels = recurrax.param_labels(cell)
    assert labels.weight_ih == "no_decay"
    assert isinstance(cell, recurrax.NO_DECAY_TYPES)
    ```
"""


def _field_name(path: tuple) -> str | None:
    key = path[0] if len(path) == 1 else None
    return key.name if isinstance(key, jax.tree_util.GetAttrKey) else None


def _check_tables(recurrent_fields, no_decay_types) -> None:
    for cls, names in recurrent_fields.items():
        if not isinstance(cls, type):
            raise ValueError(
                f"param_labels: the keys of `recurrent_fields` must be layer types, got {cls!r}."
            )
        if isinstance(names, str):
            raise ValueError(
                f"param_labels: `recurrent_fields[{cls.__name__}]` must be a collection of "
                f"field names, got the single string {names!r}."
            )
        if dataclasses.is_dataclass(cls):
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(names) - known)
            if unknown:
                raise ValueError(
                    f"param_labels: `recurrent_fields[{cls.__name__}]` names {unknown}, which "
                    f"are not fields of {cls.__name__} (its fields: {sorted(known)})."
                )
    for cls in no_decay_types:
        if not isinstance(cls, type):
            raise ValueError(
                f"param_labels: `no_decay_types` must contain layer types, got {cls!r}."
            )


def _label(node, group: str, recurrent_fields, no_decay_types):
    """Labels for the array leaves of `node` (arrays or `None` after `eqx.filter`), `group`
    unless a layer below says otherwise (a table entry, else the layer's declarations)."""
    if node is None:
        return None
    if eqx.is_array(node):
        return group
    recurrent = next((f for t, f in recurrent_fields.items() if isinstance(node, t)), None)
    mixer = isinstance(node, AbstractMixer)
    if recurrent is None and mixer and type(node).recurrent_fields:
        recurrent = type(node).recurrent_fields
    if recurrent is None and (
        isinstance(node, no_decay_types) or (mixer and type(node).no_weight_decay)
    ):
        group = NO_DECAY
    # One level down: the node's children, with their attribute names where it has them.
    children, treedef = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)
    if len(children) == 1 and children[0][1] is node:
        return None  # a leaf that is not an array (only `None` appears after `eqx.filter`)
    labels = []
    for path, child in children:
        child_group = group
        if recurrent is not None:
            child_group = RECURRENT if _field_name(path) in recurrent else DECAY
        labels.append(_label(child, child_group, recurrent_fields, no_decay_types))
    return jax.tree_util.tree_unflatten(treedef, labels)


def param_labels(
    model: PyTree,
    *,
    recurrent_fields: Mapping[type, Collection[str]] | None = None,
    no_decay_types: tuple[type, ...] = NO_DECAY_TYPES,
) -> PyTree[str | None]:
    r"""The optimiser group of every parameter: `"recurrent"`, `"no_decay"` or `"decay"`.

    The model is searched for layers at any depth (in tuples, lists, dicts, blocks, other
    modules). Each layer says its group through its class variables (see
    [`recurrax.AbstractMixer`][]): within a layer that declares `recurrent_fields`, those
    fields are `"recurrent"` and its other parameters `"decay"`; within a layer that declares
    `no_weight_decay` (or whose type is in `no_decay_types`) every parameter is `"no_decay"`;
    everything else (encoders, MLP/GLU linears, norms, heads) is `"decay"`. A layer nested
    inside another is labelled by its own declarations. The table `recurrent_fields`, when
    given, takes precedence over the declarations of the types it lists (the first that
    matches by `isinstance`).

    The declarations of the built-in layers:

    - [`recurrax.LRU`][]: `nu_log`, `theta_log`, `gamma_log`, `B_re`, `B_im` are
        `"recurrent"` (base × `lr_factor`, no decay); `C_re`, `C_im`, `D` are `"decay"`.
    - [`recurrax.DiagonalSSM`][]: `Lambda_re_log`, `Lambda_im`, `log_step`, `B_re`, `B_im`
        are `"recurrent"`; `C_re`, `C_im`, `D` are `"decay"`.
    - [`recurrax.RGLRU`][]: `a_param` is `"recurrent"`; the gates are `"decay"`.
    - [`recurrax.SelectiveSSM`][]: `Lambda_re_log`, `Lambda_im`, `step_proj`, `B_re`,
        `B_im`, `B_proj` are `"recurrent"`; `C_re`, `C_im`, `C_proj`, `D` are `"decay"`.
    - [`recurrax.MinGRU`][], [`recurrax.MinLSTM`][], [`recurrax.GRU`][],
        [`recurrax.LSTM`][], any other [`recurrax.AbstractRecurrentLayer`][], and
        `eqx.nn.GRUCell`, `eqx.nn.LSTMCell`: all `"no_decay"` (base, no decay).
    - Anything else: `"decay"` (AdamW with weight decay).

    **Arguments:**

    - `model`: any pytree, usually an `equinox.Module`.
    - `recurrent_fields`: `None`, or `{layer type: names of its recurrent fields}` for
        layers that do not declare theirs (or to override a declaration).
    - `no_decay_types`: more layer types whose parameters are all `"no_decay"`; default
        [`recurrax.NO_DECAY_TYPES`][]. Recurrent fields take precedence.

    **Returns:**

    A pytree with the structure of `eqx.filter(model, eqx.is_inexact_array)` whose array
    leaves are replaced by the group names (other leaves `None`): the `param_labels` of
    `optax.multi_transform`.

    **Raises:**

    `ValueError` if a key of `recurrent_fields` is not a type or lists a name that is not a
    field of it, or if `no_decay_types` holds something other than types.

    !!! example

        ```python
        import jax
        import recurrax

        labels = recurrax.param_labels(recurrax.LRU(2, 4, key=jax.random.key(0)))
        print(labels.nu_log, labels.C_re)                        # recurrent decay
        ```
    """
    no_decay_types = tuple(no_decay_types)
    recurrent_fields = {} if recurrent_fields is None else recurrent_fields
    _check_tables(recurrent_fields, no_decay_types)
    fields = {cls: frozenset(names) for cls, names in recurrent_fields.items()}
    params = eqx.filter(model, eqx.is_inexact_array)
    return _label(params, DECAY, fields, no_decay_types)
