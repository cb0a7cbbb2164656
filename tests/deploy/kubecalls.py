"""The Kubernetes API permissions the code needs, derived from the code itself.

Two readings, both with ``ast``, neither importing anything it reads:
1. the official client (``kubernetes.client.api``): each operation method, e.g.
   ``read_namespaced_lease``, builds its request in ``_<operation>_serialize`` with
   ``param_serialize(method=..., resource_path=...)``; the HTTP method and the path give the RBAC
   verb, API group, resource and subresource exactly as the API server's authorizer derives them
   (GET on a named object = get, GET on a collection = list, or watch with ``watch=True``, POST =
   create, PUT = update, PATCH = patch, DELETE = delete / deletecollection);
2. the project's code under apps/: every reference to such an operation, called or passed along
   (``watch.Watch().stream(api.list_namespaced_lease, ...)`` is a watch, and so is any call with
   ``watch=True``), and every request made below those methods with a constant HTTP method and
   API path (``send("PUT", COLLECTION + "/{name}", ...)``), mapped the same way. A request whose
   method or path is only known at run time is not seen: the Role test then reports the grant
   as unused, which is the safe direction to be wrong in.
A permission the code needs and the Role lacks fails in production with 403; one the Role grants
and no code uses is privilege nobody asked for. The tests compare the two both ways.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# /api/v1/... (core) or /apis/<group>/<version>/..., optionally namespaced, then the resource,
# optionally a name, optionally a subresource.
_PATH = re.compile(
    r"^/(?:api/(?P<core_version>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"(?:/namespaces/\{namespace\})?"
    r"/(?P<resource>[a-z0-9]+)"
    r"(?:/(?P<name>\{name\})(?:/(?P<subresource>[a-z]+))?)?$"
)
_SUFFIXES = ("_with_http_info", "_without_preload_content")


class UnknownOperation(Exception):
    """An operation name the client does not define, or a path RBAC does not cover."""


@dataclass(frozen=True, order=True)
class Permission:
    """One (API group, resource[/subresource], verb) triple, as RBAC rules grant them."""

    group: str
    resource: str
    verb: str

    def __str__(self) -> str:
        return "%s %s%s" % (self.verb, self.resource, "." + self.group if self.group else "")


@dataclass(frozen=True)
class Operation:
    method_name: str
    http_method: str
    path: str

    def permission(self, *, watch: bool = False) -> Permission:
        match = _PATH.match(self.path)
        if match is None:
            raise UnknownOperation("%s: path %s names no resource RBAC covers" % (self.method_name, self.path))
        group = match["group"] or ""
        resource = match["resource"] + ("/" + match["subresource"] if match["subresource"] else "")
        named = match["name"] is not None
        verbs = {
            ("GET", True): "get",
            ("GET", False): "watch" if watch else "list",
            ("POST", False): "create",
            ("PUT", True): "update",
            ("PATCH", True): "patch",
            ("DELETE", True): "delete",
            ("DELETE", False): "deletecollection",
        }
        verb = verbs.get((self.http_method, named))
        if verb is None:
            raise UnknownOperation("%s: %s %s has no RBAC verb" % (self.method_name, self.http_method, self.path))
        return Permission(group, resource, verb)


def _client_api_dir() -> Path:
    spec = importlib.util.find_spec("kubernetes")
    if spec is None or spec.origin is None:
        raise UnknownOperation("the kubernetes client is not installed")
    return Path(spec.origin).parent / "client" / "api"


@functools.cache
def client_operations() -> dict[str, Operation]:
    """Every operation of the installed client's API classes, by method name."""
    operations: dict[str, Operation] = {}
    for path in sorted(_client_api_dir().glob("*_api.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not (
                isinstance(node, ast.FunctionDef) and node.name.startswith("_") and node.name.endswith("_serialize")
            ):
                continue
            for call in ast.walk(node):
                if (
                    isinstance(call, ast.Call)
                    and isinstance(call.func, ast.Attribute)
                    and call.func.attr == "param_serialize"
                ):
                    keywords = {k.arg: k.value for k in call.keywords}
                    method, resource_path = keywords.get("method"), keywords.get("resource_path")
                    if isinstance(method, ast.Constant) and isinstance(resource_path, ast.Constant):
                        name = node.name[1 : -len("_serialize")]
                        operations[name] = Operation(name, str(method.value), str(resource_path.value))
    if not operations:
        raise UnknownOperation("found no operations in %s: has the client's generated code changed shape?" % path)
    return operations


@dataclass(frozen=True)
class Use:
    """One place in the code that uses a client operation."""

    file: str
    line: int
    operation: Operation
    watch: bool
    # The field_selector passed with it, when it is a constant (or a constant-prefixed format).
    field_selector: str | None

    def permission(self) -> Permission:
        # A watch is one GET ?watch=true: the authorizer checks "watch" alone. Code that lists
        # first (for a resourceVersion) makes a separate list call, found on its own.
        return self.operation.permission(watch=self.watch)


def _operation_name(attr: str) -> str:
    for suffix in _SUFFIXES:
        if attr.endswith(suffix):
            return attr[: -len(suffix)]
    return attr


def _constant_text(node: ast.AST | None) -> str | None:
    """The literal text of a string argument: a constant, the constant parts of an f-string, or the
    format string of ``"..." % x``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
        return _constant_text(node.left)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format":
        return _constant_text(node.func.value)
    return None


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


HTTP_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}


def _module_strings(tree: ast.Module) -> dict[str, str]:
    """Module-level ``NAME = "..."`` constants (request paths are often kept in one)."""
    strings: dict[str, str] = {}
    for statement in tree.body:
        if (
            isinstance(statement, ast.Assign)
            and len(statement.targets) == 1
            and isinstance(statement.targets[0], ast.Name)
            and isinstance(statement.value, ast.Constant)
            and isinstance(statement.value.value, str)
        ):
            strings[statement.targets[0].id] = statement.value.value
    return strings


def _resolve(node: ast.AST | None, strings: dict[str, str]) -> str | None:
    """A string argument whose whole value is known statically: a constant, a module constant, or
    a concatenation of those."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return strings.get(node.id)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _resolve(node.left, strings), _resolve(node.right, strings)
        return left + right if left is not None and right is not None else None
    return None


def _raw_request(call: ast.Call, strings: dict[str, str]) -> Operation | None:
    """A request made below the operation methods, e.g. ``api_client.param_serialize(method="PUT",
    resource_path=...)`` or a project helper called as ``send("PUT", PATH + "/{name}", ...)``: any
    call with a constant HTTP method and a constant API path among its arguments."""
    arguments = [*call.args, *(k.value for k in call.keywords)]
    values = [_resolve(argument, strings) for argument in arguments]
    methods = [v for v in values if v in HTTP_METHODS]
    paths = [v for v in values if v is not None and v.startswith(("/api/", "/apis/"))]
    if len(methods) == 1 and len(paths) == 1:
        return Operation("%s %s" % (methods[0], paths[0]), methods[0], paths[0])
    return None


def scan_source(source: str, filename: str) -> Iterator[Use]:
    operations = client_operations()
    tree = ast.parse(source, filename=filename)
    strings = _module_strings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            raw = _raw_request(node, strings)
            if raw is not None:
                raw.permission()  # a path RBAC cannot map fails here, with its name
                keywords = {k.arg: k.value for k in node.keywords}
                yield Use(
                    filename,
                    node.lineno,
                    raw,
                    watch=False,
                    field_selector=_constant_text(keywords.get("field_selector")),
                )
    parents: dict[ast.AST, ast.AST] = {}
    for parent in ast.walk(tree):
        for child in ast.iter_child_nodes(parent):
            parents[child] = parent
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        operation = operations.get(_operation_name(node.attr))
        if operation is None:
            continue
        holder = parents.get(node)
        call: ast.Call | None = None
        watch = False
        if isinstance(holder, ast.Call) and holder.func is node:
            # api.list_namespaced_lease(..., watch=True)
            call = holder
            keywords = {k.arg: k.value for k in call.keywords}
            watch = _is_true(keywords.get("watch"))
        elif isinstance(holder, ast.Call) and node in holder.args:
            # watch.Watch().stream(api.list_namespaced_lease, ...): the operation is handed over.
            call = holder
            watch = isinstance(holder.func, ast.Attribute) and holder.func.attr == "stream"
        keywords = {k.arg: k.value for k in call.keywords} if call is not None else {}
        yield Use(
            file=filename,
            line=node.lineno,
            operation=operation,
            watch=watch,
            field_selector=_constant_text(keywords.get("field_selector")),
        )


def scan(paths: Iterable[Path], root: Path) -> list[Use]:
    uses: list[Use] = []
    for path in sorted(paths):
        uses.extend(scan_source(path.read_text(), str(path.relative_to(root))))
    return uses


def required_permissions(uses: Iterable[Use]) -> set[Permission]:
    return {use.permission() for use in uses}


@dataclass(frozen=True)
class Grant:
    permission: Permission
    # None: any object of the resource; otherwise only these names.
    resource_names: frozenset[str] | None


def role_grants(role: dict[str, Any]) -> list[Grant]:
    """Each (group, resource, verb) a Role's rules grant, with their resourceNames."""
    grants: list[Grant] = []
    for rule in role.get("rules", []):
        if rule.get("nonResourceURLs"):
            raise UnknownOperation("a Role cannot grant nonResourceURLs: %r" % rule)
        names = rule.get("resourceNames")
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                for verb in rule.get("verbs", []):
                    grants.append(Grant(Permission(group, resource, verb), frozenset(names) if names else None))
    return grants


def compare(required: set[Permission], grants: Iterable[Grant]) -> tuple[set[Permission], set[Permission]]:
    """(needed but not granted, granted but not needed)."""
    granted = {grant.permission for grant in grants}
    return required - granted, granted - required
