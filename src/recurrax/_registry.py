r"""The mixer registry: the one table that maps a mixer's name (`ModelConfig.mixer`, the
command line's `--model`) to how it is built.

Every built-in mixer registers itself at the end of its own module; a user's mixer registers
itself the same way, from the user's file, with [`recurrax.register_mixer`][]. The rest of
the library and the experiments read this table and know no concrete mixer.
"""

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import os
import pathlib
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ._mixer import AbstractMixer


_BLOCKS = ("glu", "mlp", "hawk")
# Given by ModelConfig itself, never through `mixer_options`.
_RESERVED = ("key", "dtype", "bidirectional", "method")


@dataclasses.dataclass(frozen=True)
class MixerSpec:
    r"""How to build one registered mixer (see [`recurrax.register_mixer`][]).

    **Fields:**

    - `name`: the registered name (`ModelConfig(mixer=name)`, `--model name`).
    - `layer`: the mixer's class, a subclass of [`recurrax.AbstractMixer`][]; its
        keyword-only constructor arguments are the allowed `mixer_options`, and its class
        variables `recurrent_fields` and `transition_fields` give the optimiser groups and the
        parameters that `compute_dtype` leaves alone.
    - `build`: `build(width, hidden, state_size, *, dtype, key, **options) -> mixer`, the
        mixer of a block of `width` features whose mixer is `hidden = expansion × width` wide
        (a mixer maps `width → hidden` or works at `hidden`, as its block expects).
    - `block`: the block the mixer was published with, `"glu"`, `"mlp"` or `"hawk"` (what
        the experiments' presets use).
    - `summary`: one line for `python -m experiments list` and the command line's help.
    - `bidirectional`: `True` when `build` takes `bidirectional=True` itself; otherwise a
        bidirectional model wraps two of the mixer in [`recurrax.Bidirectional`][].
    - `scan_strategy`: whether `build` takes `method=` (a [`recurrax.AbstractScan`][]).
    - `choices`: options given by name in a JSON configuration, `{option: {name:
        constructor}}`; the value `"name"` becomes `constructor()` and `{"name": "name",
        **kwargs}` becomes `constructor(**kwargs)`.

    !!! example

        ```python
        import recurrax

        spec = recurrax.registered_mixers()["mingru"]
        assert isinstance(spec, recurrax.MixerSpec)
        print(spec.layer.__name__, spec.block)                   # MinGRU mlp
        ```
    """

    name: str
    layer: type
    build: Callable[..., AbstractMixer]
    block: str = "mlp"
    summary: str = ""
    bidirectional: bool = False
    scan_strategy: bool = True
    choices: Mapping[str, Mapping[str, Callable[..., Any]]] = dataclasses.field(
        default_factory=dict
    )

    def option_names(self) -> tuple[str, ...] | None:
        """The `mixer_options` this mixer takes (its class's keyword-only constructor
        arguments, and the options in `choices`), or `None` when its constructor takes any
        keyword."""
        parameters = inspect.signature(self.layer.__init__).parameters.values()
        if any(p.kind == p.VAR_KEYWORD for p in parameters):
            return None
        names = {p.name for p in parameters if p.kind == p.KEYWORD_ONLY and p.name not in _RESERVED}
        return tuple(sorted(names | set(self.choices)))

    def check_options(self, options: Mapping[str, Any], *, owner: str = "ModelConfig") -> None:
        """Refuse an option the mixer does not take and a `choices` value it does not know.

        **Raises:** `ValueError` naming the option, the allowed ones and the value."""
        allowed = self.option_names()
        if allowed is not None:
            unknown = sorted(set(options) - set(allowed))
            if unknown:
                raise ValueError(
                    f"{owner}: the {self.name!r} mixer ({self.layer.__name__}) takes no "
                    f"mixer_options {unknown}; its options are {list(allowed)}, got "
                    f"mixer_options={dict(options)!r:.200}."
                )
        for name, table in self.choices.items():
            if name in options:
                _choice(owner, name, table, options[name])

    def resolve_options(
        self, options: Mapping[str, Any], *, owner: str = "ModelConfig"
    ) -> dict[str, Any]:
        """The constructor's keyword arguments: `options` with the `choices` made objects."""
        self.check_options(options, owner=owner)
        resolved = dict(options)
        for name, table in self.choices.items():
            if name in resolved:
                constructor, kwargs = _choice(owner, name, table, resolved[name])
                resolved[name] = constructor(**kwargs)
        return resolved


def _choice(owner: str, name: str, table: Mapping, value: Any) -> tuple[Callable, dict]:
    """The constructor and keyword arguments a `choices` value names."""
    kwargs = dict(value) if isinstance(value, dict) else {}
    choice = kwargs.pop("name", None) if isinstance(value, dict) else value
    if not isinstance(choice, str) or choice not in table:
        raise ValueError(
            f"{owner}: mixer_options[{name!r}] must be one of {tuple(table)} (or a dict with "
            f"'name' and the constructor's keyword arguments), got {value!r:.80}."
        )
    return table[choice], kwargs


_REGISTRY: dict[str, MixerSpec] = {}


def register_mixer(
    name: str,
    layer: type,
    build: Callable[..., AbstractMixer],
    *,
    block: str = "mlp",
    summary: str = "",
    bidirectional: bool = False,
    scan_strategy: bool = True,
    choices: Mapping[str, Mapping[str, Callable[..., Any]]] | None = None,
    replace: bool = False,
) -> MixerSpec:
    r"""Register a mixer under `name`, for [`recurrax.ModelConfig`][] (`mixer=name`) and the
    experiments' command line (`--model name`).

    **Arguments:** the fields of [`recurrax.MixerSpec`][], and `replace`: allow a name that
    is already registered (otherwise refused, so that two mixers never share one).

    **Returns:** the registered [`recurrax.MixerSpec`][].

    **Raises:** `ValueError` naming the argument: an empty or taken `name`, a `layer` that is
    not an [`recurrax.AbstractMixer`][] class, a `build` that is not callable, an unknown
    `block`.

    !!! example

        ```python
        import jax
        import jax.numpy as jnp
        import recurrax

        recurrax.register_mixer(
            "narrow-lru",
            recurrax.LRU,
            lambda width, hidden, state_size, *, dtype, key, **options: recurrax.LRU(
                hidden, 4, dtype=dtype, key=key, **options
            ),
            block="glu",
            summary="an LRU with a 4-dimensional state",
            replace=True,
        )
        model, state = recurrax.ModelConfig(
            mixer="narrow-lru", input_size=2, norm=None
        ).build(key=jax.random.key(0))
        assert model(jnp.ones((5, 2))).shape == (10,)
        ```
    """
    owner = "register_mixer"
    if not isinstance(name, str) or not name or name != name.strip():
        raise ValueError(f"{owner}: `name` must be a non-empty string, got name={name!r}.")
    if not (isinstance(layer, type) and issubclass(layer, AbstractMixer)):
        raise ValueError(
            f"{owner}: `layer` must be a subclass of recurrax.AbstractMixer, got layer={layer!r}."
        )
    fields = {f.name for f in dataclasses.fields(layer)}
    for declaration in ("recurrent_fields", "transition_fields"):
        unknown = sorted(set(getattr(layer, declaration)) - fields)
        if unknown:
            raise ValueError(
                f"{owner}: {layer.__name__}.{declaration} names {unknown}, which are not "
                f"fields of {layer.__name__} (its fields: {sorted(fields)})."
            )
    if not callable(build):
        raise ValueError(f"{owner}: `build` must be callable, got build={build!r}.")
    if block not in _BLOCKS:
        raise ValueError(f"{owner}: `block` must be one of {_BLOCKS}, got block={block!r}.")
    for flag, value in (("bidirectional", bidirectional), ("scan_strategy", scan_strategy)):
        if not isinstance(value, bool):
            raise ValueError(f"{owner}: `{flag}` must be a bool, got {flag}={value!r}.")
    if name in _REGISTRY and not replace and not _same_definition(_REGISTRY[name].layer, layer):
        raise ValueError(
            f"{owner}: a mixer named {name!r} is registered already "
            f"({_REGISTRY[name].layer.__qualname__}); pass replace=True to replace it."
        )
    choices = {k: types.MappingProxyType(dict(v)) for k, v in (choices or {}).items()}
    spec = MixerSpec(
        name=name,
        layer=layer,
        build=build,
        block=block,
        summary=summary,
        bidirectional=bidirectional,
        scan_strategy=scan_strategy,
        choices=types.MappingProxyType(choices),
    )
    _REGISTRY[name] = spec
    return spec


def registered_mixers() -> Mapping[str, MixerSpec]:
    r"""The registered mixers, `{name: MixerSpec}`, in registration order (the built-in ones
    first); a read-only view that follows later registrations.

    !!! example

        ```python
        import recurrax

        assert {"lru", "mingru", "rglru"} <= set(recurrax.registered_mixers())
        assert recurrax.registered_mixers()["lru"].layer is recurrax.LRU
        ```
    """
    return types.MappingProxyType(_REGISTRY)


def mixer_spec(name: str, *, owner: str = "ModelConfig", option: str = "mixer") -> MixerSpec:
    r"""The [`recurrax.MixerSpec`][] registered as `name`.

    **Raises:** `ValueError` naming `option`, the value and the registered names.

    !!! example

        ```python
        import recurrax

        assert recurrax.mixer_spec("lru").block == "glu"
        ```
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(
            f"{owner}: `{option}` must be one of the registered mixers {tuple(_REGISTRY)}, "
            f"got {option}={name!r}."
        )
    return _REGISTRY[name]


def _same_definition(old: type, new: type) -> bool:
    """The same class statement imported twice (e.g. a plugin file loaded by path and as a
    module): registering it again replaces the entry instead of failing."""
    try:
        same_file = inspect.getsourcefile(old) == inspect.getsourcefile(new)
    except TypeError:
        return False
    return same_file and old.__qualname__ == new.__qualname__


def load_plugins(plugins: Sequence[str], *, option: str = "plugins") -> None:
    r"""Import user modules that register mixers: each entry is a Python file (a path ending in
    `.py`) or an importable module name. A file is imported once per process however often it
    is named; a module follows Python's import rules. What the experiments' `--plugin` and a
    run's recorded `plugins` use, so that a run of a user's mixer can be resumed and loaded.

    **Raises:** `ValueError` naming `option` and the entry: a missing file, a module that
    cannot be imported, or an error raised while importing it.

    !!! example

        ```python
        import recurrax

        recurrax.load_plugins(["json"])  # any importable module; usually the user's own
        ```
    """
    if isinstance(plugins, str):
        raise ValueError(
            f"load_plugins: `{option}` must be a list of files or module names, got the single "
            f"string {plugins!r}."
        )
    for plugin in plugins:
        if not isinstance(plugin, str) or not plugin:
            raise ValueError(f"load_plugins: `{option}` holds {plugin!r}, not a file or module.")
        try:
            if plugin.endswith(".py") or os.sep in plugin:
                _import_file(pathlib.Path(plugin), option)
            else:
                importlib.import_module(plugin)
        except ValueError:
            raise
        except Exception as error:  # the plugin's own failure, named with its entry
            raise ValueError(
                f"{option}: importing {plugin!r} failed: {type(error).__name__}: {error}"
            ) from error


def _import_file(path: pathlib.Path, option: str) -> None:
    if not path.is_file():
        raise ValueError(f"{option}: no Python file {str(path)!r}.")
    resolved = path.resolve()
    name = "recurrax_plugin_" + hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, resolved)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
