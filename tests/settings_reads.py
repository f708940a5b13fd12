"""Which settings a command reads, found in its source (for test_command_settings.py).

The analysis follows a ``Settings`` object from where a command builds it (``Settings()``,
``cast(..., Settings)()``, a helper annotated ``-> Settings``) through every first-party
function it is passed to, and collects each field read: ``settings.<field>``, a property
(its own reads of ``self``), ``getattr(settings, "<field>")``, and every field for a
dynamic ``getattr`` or ``model_dump``. Whatever it cannot follow raises
:class:`Untraceable` naming the file and line: the object stored in an attribute or a
container, passed to a function outside the first-party packages or to a callable it cannot
resolve, returned from a function not annotated ``-> Settings``. A new way of reading
settings therefore fails the test instead of slipping past it; the fix is to read the field
where the analysis sees it (or to teach the analysis), never to silence it.

Names are resolved statically: imports (module level and inside functions, as Sieve's
commands import late), module-level functions and classes, methods through their class or
``self``/``cls``, and functions defined inside the function being read.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

FIRST_PARTY = ("streams", "aggregations", "schemas")
SETTINGS_CLASS = ("streams.settings", "Settings")
# Attributes of a settings object that are not settings values.
_METADATA = frozenset({"model_fields", "model_fields_set", "model_copy"})
_EVERY_FIELD = frozenset({"model_dump", "model_dump_json"})

FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef
# The scope of module-level code: nothing defined inside it.
_EMPTY_FUNCTION = ast.parse("def _module(): pass").body[0]
assert isinstance(_EMPTY_FUNCTION, ast.FunctionDef)


class Untraceable(Exception):
    """The analysis cannot tell what some code does with a settings object."""


@dataclass(frozen=True)
class Function:
    """A function or method: its module, its dotted path in the module, and its node."""

    module: str
    qualname: str
    node: FunctionNode = field(compare=False, hash=False, repr=False)
    owner_class: str | None = field(default=None, compare=False, hash=False)


@dataclass
class _Module:
    name: str
    path: str
    tree: ast.Module
    parents: dict[ast.AST, ast.AST]
    # Top-level and class-level definitions by dotted path ("f", "Class", "Class.method").
    defs: dict[str, ast.AST]
    imports: dict[str, tuple[str, str | None]]


def _imports_in(nodes: Iterable[ast.AST], module: str) -> dict[str, tuple[str, str | None]]:
    """Local name -> (module, attribute or None) for every import among ``nodes``."""
    found: dict[str, tuple[str, str | None]] = {}
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    found[alias.asname] = (alias.name, None)
                else:
                    top = alias.name.split(".")[0]
                    found[top] = (top, None)
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            base = node.module or ""
            if node.level:
                package = module.rsplit(".", node.level)[0]
                base = f"{package}.{base}" if base else package
            for alias in node.names:
                found[alias.asname or alias.name] = (base, alias.name)
    return found


class SettingsReads:
    """The analysis over a set of modules: real files, or ``sources`` for tests of it."""

    def __init__(
        self,
        fields: Iterable[str],
        *,
        sources: Mapping[str, str] | None = None,
        first_party: tuple[str, ...] = FIRST_PARTY,
        settings_class: tuple[str, str] = SETTINGS_CLASS,
    ) -> None:
        self.fields = frozenset(fields)
        self._sources = dict(sources or {})
        self._first_party = first_party
        self._settings_class = settings_class
        self._modules: dict[str, _Module | None] = {}
        self._memo: dict[tuple[Function, frozenset[str]], frozenset[str]] = {}
        self._active: set[tuple[Function, frozenset[str]]] = set()
        self._properties: dict[str, frozenset[str]] | None = None
        self._locals: dict[int, dict[str, FunctionNode]] = {}
        # Every function whose code was read, and every place a Settings is built in them.
        self.visited: set[Function] = set()

    # --- modules and names ---------------------------------------------------------------

    def _first_party_module(self, name: str) -> bool:
        return name.split(".")[0] in self._first_party

    def module(self, name: str) -> _Module | None:
        if name in self._modules:
            return self._modules[name]
        loaded: _Module | None = None
        if self._first_party_module(name):
            if name in self._sources:
                source, path = self._sources[name], f"<{name}>"
            else:
                spec = importlib.util.find_spec(name)
                origin = spec.origin if spec else None
                source = Path(origin).read_text("utf-8") if origin else None
                path = origin or name
            if source is not None:
                loaded = self._parse(name, path, source)
        self._modules[name] = loaded
        return loaded

    def _is_module(self, name: str) -> bool:
        if name in self._sources:
            return True
        if not self._first_party_module(name):
            return False
        try:
            return importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            return False

    def _parse(self, name: str, path: str, source: str) -> _Module:
        tree = ast.parse(source, path)
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        defs: dict[str, ast.AST] = {}
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                defs[node.name] = node
            if isinstance(node, ast.ClassDef):
                for member in node.body:
                    if isinstance(member, ast.FunctionDef | ast.AsyncFunctionDef):
                        defs[f"{node.name}.{member.name}"] = member
        # Every import, also under `if TYPE_CHECKING:` and inside functions (as a late import
        # of the same name would bind the same thing).
        imports = _imports_in(ast.walk(tree), name)
        return _Module(name, path, tree, parents, defs, imports)

    def _lookup(self, module: str, name: str, depth: int = 0) -> tuple[str, str] | None:
        """(module, dotted name) of what ``name`` means at the top of ``module``: a module
        is ("<module>", ""), a definition (module, name); None if not first-party."""
        if depth > 10:
            return None
        loaded = self.module(module)
        if loaded is None:
            return None
        if name in loaded.defs:
            return (module, name)
        if name in loaded.imports:
            return self._follow_import(*loaded.imports[name], depth=depth + 1)
        if self._is_module(f"{module}.{name}"):
            return (f"{module}.{name}", "")
        return None

    def _follow_import(
        self, module: str, attribute: str | None, depth: int = 0
    ) -> tuple[str, str] | None:
        if attribute is None:
            return (module, "") if self._is_module(module) else None
        if self._is_module(f"{module}.{attribute}"):
            return (f"{module}.{attribute}", "")
        return self._lookup(module, attribute, depth)

    def function(self, module: str, qualname: str) -> Function:
        """The function ``qualname`` of ``module`` (a click callback's ``__qualname__``)."""
        loaded = self.module(module)
        node = loaded.defs.get(qualname) if loaded else None
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            raise Untraceable(f"no function {qualname} in {module}")
        owner = qualname.rsplit(".", 1)[0] if "." in qualname else None
        return Function(module, qualname, node, owner)

    def _local_defs(self, scope: Function) -> dict[str, FunctionNode]:
        """The functions defined inside ``scope``, by name."""
        key = id(scope.node)
        if key not in self._locals:
            self._locals[key] = {
                node.name: node
                for node in ast.walk(scope.node)
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                and node is not scope.node
            }
        return self._locals[key]

    def _resolve(self, expr: ast.expr, scope: Function) -> tuple[str, str] | None:
        """What ``expr`` names, seen from inside ``scope``: (module, "") for a module,
        (module, dotted name) for a definition, or ("<local>", name) for a function defined
        inside ``scope``; None if unknown or not first-party."""
        if isinstance(expr, ast.Name):
            if expr.id in self._local_defs(scope):
                return ("<local>", expr.id)
            return self._lookup(scope.module, expr.id)
        if isinstance(expr, ast.Attribute):
            if isinstance(expr.value, ast.Name) and expr.value.id in ("self", "cls"):
                if scope.owner_class is not None:
                    return (scope.module, f"{scope.owner_class}.{expr.attr}")
                return None
            base = self._resolve(expr.value, scope)
            if base is None or base[0] == "<local>":
                return None
            module, name = base
            if name == "":
                return self._lookup(module, expr.attr)
            loaded = self.module(module)
            if loaded and isinstance(loaded.defs.get(name), ast.ClassDef):
                return (module, f"{name}.{expr.attr}")
        return None

    def _callee(self, expr: ast.expr, scope: Function) -> Function | None:
        target = self._resolve(expr, scope)
        if target is None:
            return None
        module, name = target
        if module == "<local>":
            node = self._local_defs(scope)[name]
            return Function(scope.module, f"{scope.qualname}.<locals>.{name}", node)
        loaded = self.module(module)
        node = loaded.defs.get(name) if loaded and name else None
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            owner = name.rsplit(".", 1)[0] if "." in name else None
            return Function(module, name, node, owner)
        return None

    def _is_settings_class(self, expr: ast.expr, scope: Function) -> bool:
        return self._resolve(expr, scope) == self._settings_class

    # --- the settings object -----------------------------------------------------------

    def _returns_settings(self, function: Function) -> bool:
        returns = function.node.returns
        if isinstance(returns, ast.Constant) and isinstance(returns.value, str):
            returns = ast.parse(returns.value, mode="eval").body
        return returns is not None and self._is_settings_class(returns, function)

    def _is_settings(self, expr: ast.AST, names: set[str], scope: Function) -> bool:
        """Whether ``expr`` evaluates to a settings object."""
        if isinstance(expr, ast.Name):
            return isinstance(expr.ctx, ast.Load) and expr.id in names
        if not isinstance(expr, ast.Call):
            return False
        func = expr.func
        if self._is_settings_class(func, scope):
            return True
        if (  # cast(Callable[[], Settings], Settings)()
            isinstance(func, ast.Call)
            and isinstance(func.func, ast.Name)
            and func.func.id == "cast"
            and len(func.args) == 2
            and self._is_settings_class(func.args[1], scope)
        ):
            return True
        if isinstance(func, ast.Attribute) and func.attr == "model_copy":
            return self._is_settings(func.value, names, scope)
        callee = self._callee(func, scope)
        if callee is not None and self._returns_settings(callee):
            self.visited.add(callee)
            return True
        return False

    def _settings_names(self, function: Function, parameters: frozenset[str]) -> set[str]:
        """The local names bound to a settings object in ``function``."""
        names = set(parameters)
        while True:
            before = len(names)
            for node in ast.walk(function.node):
                if isinstance(node, ast.Assign | ast.AnnAssign | ast.NamedExpr):
                    value = node.value
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    if value is not None and self._is_settings(value, names, function):
                        names.update(t.id for t in targets if isinstance(t, ast.Name))
            if len(names) == before:
                return names

    def properties(self) -> dict[str, frozenset[str]]:
        """Each property of the settings class: the fields it reads from ``self``."""
        if self._properties is None:
            module, name = self._settings_class
            loaded = self.module(module)
            cls = loaded.defs.get(name) if loaded else None
            self._properties = {}
            for member in cls.body if isinstance(cls, ast.ClassDef) else ():
                if isinstance(member, ast.FunctionDef) and any(
                    isinstance(d, ast.Name) and d.id == "property" for d in member.decorator_list
                ):
                    self._properties[member.name] = frozenset(
                        node.attr
                        for node in ast.walk(member)
                        if isinstance(node, ast.Attribute)
                        and isinstance(node.value, ast.Name)
                        and node.value.id == "self"
                        and node.attr in self.fields
                    )
        return self._properties

    def _attribute(self, name: str) -> frozenset[str] | None:
        if name in self.fields:
            return frozenset({name})
        return self.properties().get(name)

    # --- reads --------------------------------------------------------------------------

    def reads(self, function: Function, parameters: frozenset[str] = frozenset()) -> frozenset[str]:
        """The settings fields ``function`` reads, from the settings objects it builds and
        from its ``parameters`` (names bound to settings objects by its caller)."""
        key = (function, parameters)
        if key in self._memo:
            return self._memo[key]
        if key in self._active:  # recursion: the outer call collects the rest
            return frozenset()
        self._active.add(key)
        self.visited.add(function)
        try:
            found = frozenset(self._reads(function, parameters))
        finally:
            self._active.discard(key)
        self._memo[key] = found
        return found

    def _reads(self, function: Function, parameters: frozenset[str]) -> Iterator[str]:
        loaded = self.module(function.module)
        assert loaded is not None
        names = self._settings_names(function, parameters)
        for node in ast.walk(function.node):
            if node is function.node:
                continue
            if self._is_settings(node, names, function):
                where = f"{loaded.path}:{getattr(node, 'lineno', '?')}"
                yield from self._use(node, loaded, function, names, where)
            elif isinstance(node, ast.Call):
                # A function called without a settings object may build its own.
                callee = self._callee(node.func, function)
                if callee is not None:
                    yield from self.reads(callee)

    def _use(
        self, node: ast.AST, loaded: _Module, function: Function, names: set[str], where: str
    ) -> Iterator[str]:
        parent = loaded.parents[node]
        if isinstance(parent, ast.Attribute):
            read = self._attribute(parent.attr)
            if read is not None:
                yield from read
            elif parent.attr in _EVERY_FIELD:
                yield from self.fields
            elif parent.attr not in _METADATA:
                raise Untraceable(f"{where}: .{parent.attr} is not a setting")
            return
        call = loaded.parents[parent] if isinstance(parent, ast.keyword) else parent
        if isinstance(call, ast.Call) and call.func is not node:
            yield from self._passed(node, parent, call, function, where)
            return
        if isinstance(parent, ast.Assign | ast.AnnAssign | ast.NamedExpr):
            targets = parent.targets if isinstance(parent, ast.Assign) else [parent.target]
            if all(isinstance(target, ast.Name) for target in targets):
                return  # an alias: its uses are read as the settings object's own
        if isinstance(parent, ast.Return) and self._returns_settings(function):
            return
        if isinstance(parent, ast.Expr | ast.Compare):
            return
        raise Untraceable(f"{where}: a settings object used in a way this analysis cannot follow")

    def _passed(
        self, node: ast.AST, parent: ast.AST, call: ast.Call, function: Function, where: str
    ) -> Iterator[str]:
        """The reads of the function ``call`` hands the settings object ``node`` to."""
        if isinstance(call.func, ast.Name) and call.func.id == "getattr":
            name = call.args[1] if len(call.args) > 1 else None
            if isinstance(name, ast.Constant) and isinstance(name.value, str):
                yield from self._attribute(name.value) or ()
            else:
                yield from self.fields
            return
        callee = self._callee(call.func, function)
        if callee is None:
            shown = ast.unparse(call.func)
            raise Untraceable(f"{where}: a settings object passed to {shown}, not followed")
        parameter = self._parameter(callee, call, node, parent)
        if parameter is None:
            raise Untraceable(f"{where}: cannot tell which parameter of {callee.qualname} it is")
        yield from self.reads(callee, frozenset({parameter}))

    def _parameter(
        self, callee: Function, call: ast.Call, node: ast.AST, parent: ast.AST
    ) -> str | None:
        """The parameter of ``callee`` that ``node`` (an argument of ``call``) binds."""
        arguments = callee.node.args
        if isinstance(parent, ast.keyword):
            return parent.arg
        positional = [a.arg for a in (*arguments.posonlyargs, *arguments.args)]
        static = any(
            isinstance(d, ast.Name) and d.id == "staticmethod" for d in callee.node.decorator_list
        )
        if callee.owner_class is not None and not static:
            positional = positional[1:]  # self or cls, bound by the call
        index = next(i for i, argument in enumerate(call.args) if argument is node)
        if any(isinstance(argument, ast.Starred) for argument in call.args[: index + 1]):
            return None
        return positional[index] if index < len(positional) else None

    # --- where settings are built -------------------------------------------------------

    def construction_sites(self, module: str) -> Iterator[tuple[str, int]]:
        """(qualname of the enclosing function or "<module>", line) of every place
        ``module`` builds a settings object."""
        loaded = self.module(module)
        if loaded is None:
            return
        for qualname, node in loaded.defs.items():
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                scope = Function(module, qualname, node, qualname.rpartition(".")[0] or None)
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Call) and self._builds_settings(inner, scope):
                        yield (qualname, inner.lineno)
        top = Function(module, "<module>", _EMPTY_FUNCTION)
        for statement in loaded.tree.body:
            if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            for inner in ast.walk(statement):
                if isinstance(inner, ast.Call) and self._builds_settings(inner, top):
                    yield ("<module>", inner.lineno)

    def _builds_settings(self, call: ast.Call, scope: Function) -> bool:
        func = call.func
        if self._is_settings_class(func, scope):
            return True
        return (
            isinstance(func, ast.Call)
            and isinstance(func.func, ast.Name)
            and func.func.id == "cast"
            and len(func.args) == 2
            and self._is_settings_class(func.args[1], scope)
        )


def first_party_modules(root: Path, packages: tuple[str, ...] = FIRST_PARTY) -> list[str]:
    """Every module of the first-party packages under ``root`` (the repository)."""
    found = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found
