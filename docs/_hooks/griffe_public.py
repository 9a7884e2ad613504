"""A Griffe extension for the API pages: what a reader of `recurrax` sees, not its private
layout. It changes nothing in the library; mkdocstrings loads it (mkdocs.yml, `extensions`).

- **Constructor signatures of Equinox modules.** A module whose `__init__` is the one that
  `eqx.Module` generates from its fields (the scan strategies, the discretisations, the
  initialisations) has no `__init__` in its source, so the page would show no signature. The
  signature is taken from the class itself (`inspect.signature`) and added as `__init__`,
  which `merge_init_into_class` shows on the class's heading.
- **No private bases.** `Bases: _AbstractMinRNN` names a class the reader cannot use or find:
  a private base is replaced by its own bases, recursively, so `MinGRU` shows
  `AbstractRecurrentLayer`.
- **No private defaults.** A default that is a private sentinel (`state=_sentinel`, meaning
  "not passed") is shown as `...`.
"""

import dataclasses
import importlib
import inspect

import griffe


def _runtime(cls: griffe.Class):
    try:
        return getattr(importlib.import_module(cls.module.path), cls.name)
    except Exception:  # noqa: BLE001 -- a class the docs cannot import keeps its static form
        return None


def _public_bases(cls: griffe.Class, seen=()) -> list:
    bases = []
    for base in cls.bases:
        name = str(base).rsplit(".", 1)[-1]
        if not name.startswith("_"):
            bases.append(base)
            continue
        target = cls.module.members.get(name) if cls.module else None
        if isinstance(target, griffe.Alias):
            target = target.final_target
        if isinstance(target, griffe.Class) and name not in seen:
            bases.extend(_public_bases(target, (*seen, name)))
    return bases


def _annotation(annotation) -> str | None:
    if annotation is inspect.Parameter.empty:
        return None
    if isinstance(annotation, str):
        return annotation
    return inspect.formatannotation(annotation)


class PublicAPI(griffe.Extension):
    def on_class_members(self, *, cls: griffe.Class, **kwargs) -> None:
        if any(str(base).rsplit(".", 1)[-1].startswith("_") for base in cls.bases):
            cls.bases = _public_bases(cls)
        for member in cls.members.values():
            if isinstance(member, griffe.Function):
                for parameter in member.parameters:
                    if str(parameter.default).lstrip("_").startswith("sentinel"):
                        parameter.default = "..."
        if "__init__" in cls.members or cls.name.startswith(("_", "Abstract")):
            return
        if any("dataclass" in str(decorator.value) for decorator in cls.decorators):
            return  # a plain dataclass: Griffe's own dataclass support gives its signature
        runtime = _runtime(cls)
        if runtime is None or not dataclasses.is_dataclass(runtime):
            return
        if "__init__" not in vars(runtime) or inspect.isabstract(runtime):
            return
        signature = inspect.signature(runtime)
        parameters = [griffe.Parameter("self", kind=griffe.ParameterKind.positional_or_keyword)]
        for p in signature.parameters.values():
            parameters.append(
                griffe.Parameter(
                    p.name,
                    annotation=_annotation(p.annotation),
                    kind=griffe.ParameterKind(p.kind.description),
                    default=None if p.default is inspect.Parameter.empty else repr(p.default),
                )
            )
        init = griffe.Function(
            "__init__", parent=cls, parameters=griffe.Parameters(*parameters), returns="None"
        )
        cls.set_member("__init__", init)
