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
- **Shape strings as written.** Griffe parses every string inside an annotation as a Python
  expression, so jaxtyping's `Float[Array, "length *state"]` would show as `length * state`,
  `"..."` as `...`, and a string that does not parse (`"*state"`) as `'*state'`. The string
  arguments of a jaxtyping subscript are kept as the string literals the source has.
"""

import ast
import copy
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


_MARK = "__recurrax_shape_{}__"


def _shape_annotation(node: ast.expr | None, obj: griffe.Object):
    """`node`, an annotation in the source, as Griffe's expression, with the string arguments
    of jaxtyping subscripts (`Float[Array, " state"]`) kept as written; `None` when the
    annotation has none (Griffe's own expression is then right)."""
    if node is None:
        return None
    imports = obj.module.imports if obj.module else {}
    node, strings = copy.deepcopy(node), {}
    for sub in ast.walk(node):
        if not isinstance(sub, ast.Subscript):
            continue
        left = sub.value
        while isinstance(left, ast.Attribute):
            left = left.value
        if not (isinstance(left, ast.Name) and imports.get(left.id, "").startswith("jaxtyping")):
            continue
        items = sub.slice.elts if isinstance(sub.slice, ast.Tuple) else [sub.slice]
        for i, item in enumerate(items):
            if isinstance(item, ast.Constant) and isinstance(item.value, str):
                name = _MARK.format(len(strings))
                strings[name] = '"' + item.value + '"'
                replacement = ast.copy_location(ast.Name(id=name, ctx=ast.Load()), item)
                if isinstance(sub.slice, ast.Tuple):
                    sub.slice.elts[i] = replacement
                else:
                    sub.slice = replacement
    if not strings:
        return None
    parent = obj if isinstance(obj, (griffe.Module, griffe.Class)) else obj.parent
    return _restore(griffe.get_annotation(node, parent), strings)


def _restore(expr, strings: dict):
    """The expression with each marker name replaced by its string literal."""
    if isinstance(expr, griffe.ExprName) and expr.name in strings:
        return strings[expr.name]
    if isinstance(expr, (list, tuple)):
        return type(expr)(_restore(item, strings) for item in expr)
    if isinstance(expr, griffe.Expr):
        for field in dataclasses.fields(expr):
            if field.name != "parent":  # a name's parent is its scope, not a sub-expression
                setattr(expr, field.name, _restore(getattr(expr, field.name), strings))
    return expr


class PublicAPI(griffe.Extension):
    def on_function_instance(self, *, node, func: griffe.Function, **kwargs) -> None:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return  # found by inspection, not in the source: nothing to re-read
        arguments = node.args
        every = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
        every += [a for a in (arguments.vararg, arguments.kwarg) if a is not None]
        for argument in every:
            annotation = _shape_annotation(argument.annotation, func)
            if annotation is not None and argument.arg in func.parameters:
                func.parameters[argument.arg].annotation = annotation
        returns = _shape_annotation(node.returns, func)
        if returns is not None:
            func.returns = returns

    def on_attribute_instance(self, *, node, attr: griffe.Attribute, **kwargs) -> None:
        if isinstance(node, ast.AnnAssign):
            annotation = _shape_annotation(node.annotation, attr)
            if annotation is not None:
                attr.annotation = annotation

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
            field = cls.members.get(p.name)
            # A field's annotation as the source writes it; the runtime one loses the shape
            # string's leading space and quotes it with single quotes.
            if isinstance(field, griffe.Attribute) and field.annotation is not None:
                annotation = field.annotation
            else:
                annotation = _annotation(p.annotation)
            parameters.append(
                griffe.Parameter(
                    p.name,
                    annotation=annotation,
                    kind=griffe.ParameterKind(p.kind.description),
                    default=None if p.default is inspect.Parameter.empty else repr(p.default),
                )
            )
        init = griffe.Function(
            "__init__", parent=cls, parameters=griffe.Parameters(*parameters), returns="None"
        )
        cls.set_member("__init__", init)
