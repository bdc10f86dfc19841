"""A small GraphQL reader for the Shopify double: a parser for the documents the
connector sends (one operation, variables, aliases, inline fragments, directives) and a
schema-driven executor that also prices a query the way Shopify documents it
(``shopify.dev/docs/apps/build/apis/graphql-admin/rate-limits``: scalars and enums 0, an
object 1, a connection sized by ``first``/``last``, a mutation 10).

It is not a general GraphQL engine: it knows the types the double declares and refuses
anything else with Shopify's own error shapes (``undefinedField``,
``argumentNotAccepted``, a parse error), so a connector that asks for a field Shopify does
not have fails its tests instead of passing against a lenient fake.

The connection cost formula is ``2 + first × (cost of one node)``, which reproduces the
published example ``products(first: 10) { edges { node { id title } } }`` = 12; how a
plain list (``quantities``, ``userErrors``) is priced is not documented and is taken as one
object. ``nodes(ids:)`` is priced per id.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

SCALARS = frozenset(
    {
        "String",
        "Int",
        "Float",
        "ID",
        "Boolean",
        "DateTime",
        "Money",
        "URL",
        "UnsignedInt64",
        "CurrencyCode",
        "WebhookSubscriptionTopic",
        "WebhookSubscriptionFormat",
        "InventorySetQuantitiesUserErrorCode",
    }
)
MUTATION_COST = 10


class GraphQLError(Exception):
    """A top-level GraphQL error: ``{"message", "extensions": {"code", ...}}``."""

    def __init__(self, message: str, **extensions: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extensions = extensions

    def as_json(self) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message}
        if self.extensions:
            error["extensions"] = self.extensions
        return error


# The parser ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Variable:
    name: str


@dataclass(frozen=True)
class Enum:
    name: str


@dataclass
class Field:
    name: str
    alias: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)
    selections: list[Field | Fragment] = field(default_factory=list)
    directives: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.alias or self.name


@dataclass
class Fragment:
    """An inline fragment ``... on Type { }``."""

    type_condition: str | None
    selections: list[Field | Fragment]


@dataclass
class Operation:
    kind: Literal["query", "mutation"]
    name: str | None
    variables: dict[str, tuple[str, Any]]
    directives: dict[str, dict[str, Any]]
    selections: list[Field | Fragment]


_TOKEN = re.compile(
    r"""(?P<skip>[\s,\ufeff]+|\#[^\n]*)
    |(?P<spread>\.\.\.)
    |(?P<punct>[!$():=@\[\]{}|&])
    |(?P<name>[_A-Za-z][_0-9A-Za-z]*)
    |(?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
    |(?P<string>"(?:[^"\\\n]|\\.)*")""",
    re.VERBOSE,
)


def _tokens(source: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(source):
        match = _TOKEN.match(source, position)
        if match is None:
            raise GraphQLError(
                f'Parse error on "{source[position]}" at [{source.count(chr(10), 0, position) + 1}]'
            )
        kind = match.lastgroup or ""
        if kind != "skip":
            tokens.append((kind, match.group()))
        position = match.end()
    tokens.append(("end", ""))
    return tokens


class _Parser:
    def __init__(self, source: str) -> None:
        self.tokens = _tokens(source)
        self.at = 0

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.at]

    def take(self, value: str | None = None, *, kind: str | None = None) -> str:
        token_kind, token = self.tokens[self.at]
        if (value is not None and token != value) or (kind is not None and token_kind != kind):
            shown = token or "end of file"
            raise GraphQLError(f'Parse error on "{shown}" ({token_kind.upper()})')
        self.at += 1
        return token

    def is_next(self, value: str) -> bool:
        return self.tokens[self.at][1] == value and self.tokens[self.at][0] != "string"

    def document(self) -> Operation:
        if self.is_next("{"):
            operation = Operation("query", None, {}, {}, self.selection_set())
        else:
            kind = self.take(kind="name")
            if kind not in ("query", "mutation"):
                raise GraphQLError(f'Parse error on "{kind}" (IDENTIFIER)')
            name = self.take(kind="name") if self.peek()[0] == "name" else None
            variables = self.variable_definitions() if self.is_next("(") else {}
            directives = self.directives()
            operation = Operation(
                "mutation" if kind == "mutation" else "query",
                name,
                variables,
                directives,
                self.selection_set(),
            )
        if self.peek()[0] != "end":
            raise GraphQLError("This document holds more than one operation; send one.")
        return operation

    def variable_definitions(self) -> dict[str, tuple[str, Any]]:
        self.take("(")
        definitions: dict[str, tuple[str, Any]] = {}
        while not self.is_next(")"):
            self.take("$")
            name = self.take(kind="name")
            self.take(":")
            type_ref = self.type_ref()
            default = None
            if self.is_next("="):
                self.take("=")
                default = self.value()
            definitions[name] = (type_ref, default)
        self.take(")")
        return definitions

    def type_ref(self) -> str:
        if self.is_next("["):
            self.take("[")
            inner = self.type_ref()
            self.take("]")
            text = f"[{inner}]"
        else:
            text = self.take(kind="name")
        if self.is_next("!"):
            self.take("!")
            text += "!"
        return text

    def directives(self) -> dict[str, dict[str, Any]]:
        directives: dict[str, dict[str, Any]] = {}
        while self.is_next("@"):
            self.take("@")
            name = self.take(kind="name")
            directives[name] = self.arguments() if self.is_next("(") else {}
        return directives

    def selection_set(self) -> list[Field | Fragment]:
        self.take("{")
        selections: list[Field | Fragment] = []
        while not self.is_next("}"):
            if self.peek()[0] == "spread":
                self.take(kind="spread")
                condition = None
                if self.is_next("on"):
                    self.take("on")
                    condition = self.take(kind="name")
                elif self.peek()[0] == "name":
                    raise GraphQLError("Named fragments are not used by this double")
                self.directives()
                selections.append(Fragment(condition, self.selection_set()))
                continue
            name = self.take(kind="name")
            alias = None
            if self.is_next(":"):
                self.take(":")
                alias, name = name, self.take(kind="name")
            arguments = self.arguments() if self.is_next("(") else {}
            directives = self.directives()
            children = self.selection_set() if self.is_next("{") else []
            selections.append(Field(name, alias, arguments, children, directives))
        self.take("}")
        if not selections:
            raise GraphQLError('Parse error on "}" (RCURLY)')
        return selections

    def arguments(self) -> dict[str, Any]:
        self.take("(")
        arguments: dict[str, Any] = {}
        while not self.is_next(")"):
            name = self.take(kind="name")
            self.take(":")
            arguments[name] = self.value()
        self.take(")")
        return arguments

    def value(self) -> Any:
        kind, token = self.peek()
        if token == "$" and kind == "punct":
            self.take("$")
            return Variable(self.take(kind="name"))
        if token == "[" and kind == "punct":
            self.take("[")
            items = []
            while not self.is_next("]"):
                items.append(self.value())
            self.take("]")
            return items
        if token == "{" and kind == "punct":
            self.take("{")
            fields: dict[str, Any] = {}
            while not self.is_next("}"):
                name = self.take(kind="name")
                self.take(":")
                fields[name] = self.value()
            self.take("}")
            return fields
        self.at += 1
        if kind == "string":
            text: str = json.loads(token)  # GraphQL's string escapes are JSON's
            return text
        if kind == "number":
            return float(token) if any(c in token for c in ".eE") else int(token)
        if kind == "name":
            return {"true": True, "false": False, "null": None}.get(token, Enum(token))
        raise GraphQLError(f'Parse error on "{token}" ({kind.upper()})')


def parse(source: str) -> Operation:
    """Parse one operation, or raise ``GraphQLError`` as Shopify does for a bad document."""
    return _Parser(source).document()


def resolve_value(value: Any, variables: Mapping[str, Any]) -> Any:
    """A parsed argument with the request's variables put in (enums as their names)."""
    if isinstance(value, Variable):
        return variables.get(value.name)
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, list):
        return [resolve_value(item, variables) for item in value]
    if isinstance(value, dict):
        return {key: resolve_value(item, variables) for key, item in value.items()}
    return value


# The schema and the executor ----------------------------------------------------------

Shape = Literal["one", "list", "connection"]


@dataclass(frozen=True)
class FieldDef:
    """One field of a type: what it returns (a scalar, an object type, or ``Node``), in
    which shape, the arguments it accepts, and how the double resolves it."""

    type: str
    resolve: Callable[[Any, dict[str, Any]], Any]
    arguments: frozenset[str] = frozenset()
    shape: Shape = "one"


@dataclass(frozen=True)
class Page:
    """What a connection field's resolver returns."""

    items: Sequence[Any]
    cursors: Sequence[str]
    has_next_page: bool
    has_previous_page: bool = False


Schema = Mapping[str, Mapping[str, FieldDef]]
PAGE_INFO_FIELDS = frozenset({"hasNextPage", "hasPreviousPage", "startCursor", "endCursor"})


def typename(obj: Any) -> str:
    return str(obj["__typename"])


class Executor:
    """Validates, prices and runs one operation against ``schema``."""

    def __init__(
        self,
        schema: Schema,
        variables: Mapping[str, Any],
        field_costs: Mapping[str, int] | None = None,
    ) -> None:
        self.schema = schema
        self.variables = variables
        # Costs Shopify set by hand on some fields ("Type.field": points), in place of 1.
        self.field_costs = field_costs or {}

    def object_cost(self, type_name: str, name: str) -> int:
        return self.field_costs.get(f"{type_name}.{name}", 1)

    def field_def(self, type_name: str, selection: Field) -> FieldDef:
        fields = self.schema.get(type_name, {})
        definition = fields.get(selection.name)
        if definition is None and selection.name != "__typename":
            raise GraphQLError(
                f"Field '{selection.name}' doesn't exist on type '{type_name}'",
                code="undefinedField",
                typeName=type_name,
                fieldName=selection.name,
            )
        if definition is None:
            return FieldDef("String", lambda obj, args: typename(obj))
        for argument in selection.arguments:
            if argument not in definition.arguments:
                raise GraphQLError(
                    f"Field '{selection.name}' doesn't accept argument '{argument}'",
                    code="argumentNotAccepted",
                    name=selection.name,
                    typeName="Field",
                    argumentName=argument,
                )
        if definition.type in SCALARS and selection.selections:
            raise GraphQLError(
                f"Selections can't be made on scalars (field '{selection.name}' returns "
                f"{definition.type} but has selections [...])",
                code="selectionMismatch",
            )
        if definition.type not in SCALARS and not selection.selections:
            raise GraphQLError(
                f"Field must have selections (field '{selection.name}' returns "
                f"{definition.type} but has no selections. Did you mean '{selection.name} "
                "{ ... }'?)",
                code="selectionMismatch",
            )
        return definition

    def arguments(self, selection: Field) -> dict[str, Any]:
        return {
            name: resolve_value(value, self.variables)
            for name, value in selection.arguments.items()
        }

    # Requested cost (and validation), before anything runs.

    def requested(self, type_name: str, selections: Sequence[Field | Fragment]) -> int:
        total = 0
        for selection in selections:
            if isinstance(selection, Fragment):
                total += self.requested(selection.type_condition or type_name, selection.selections)
                continue
            definition = self.field_def(type_name, selection)
            if definition.type in SCALARS:
                continue
            arguments = self.arguments(selection)
            if type_name == "Mutation":
                self.requested(definition.type, selection.selections)
                total += MUTATION_COST
            elif definition.shape == "connection":
                size = arguments.get("first") or arguments.get("last")
                if not isinstance(size, int):
                    raise GraphQLError(
                        f"you must provide one of first or last ({selection.name})",
                        code="missingRequiredArguments",
                    )
                if size > 250:
                    raise GraphQLError(
                        f"The {selection.name} connection can return at most 250 records",
                        code="maxPageSizeExceeded",
                    )
                total += 2 + size * self.node_cost(definition.type, selection.selections)
            elif definition.type == "Node":
                ids = arguments.get("ids") or []
                per_node = 1 + max(
                    [
                        self.requested(fragment.type_condition or "Node", fragment.selections)
                        for fragment in selection.selections
                        if isinstance(fragment, Fragment)
                    ]
                    or [0]
                )
                total += per_node * (len(ids) if definition.shape == "list" else 1)
            else:
                total += self.object_cost(type_name, selection.name) + self.requested(
                    definition.type, selection.selections
                )
        return total

    def node_cost(self, node_type: str, selections: Sequence[Field | Fragment]) -> int:
        """One node of a connection: the node object and what it selects."""
        cost = 0
        for selection in selections:
            if isinstance(selection, Fragment):
                raise GraphQLError("Fragments directly on a connection are not supported")
            if selection.name == "nodes":
                cost = max(cost, 1 + self.requested(node_type, selection.selections))
            elif selection.name == "edges":
                for edge_field in selection.selections:
                    if isinstance(edge_field, Fragment) or edge_field.name not in (
                        "node",
                        "cursor",
                    ):
                        name = getattr(edge_field, "name", "...")
                        raise GraphQLError(
                            f"Field '{name}' doesn't exist on type '{node_type}Edge'",
                            code="undefinedField",
                        )
                    if edge_field.name == "node":
                        cost = max(cost, 1 + self.requested(node_type, edge_field.selections))
            elif selection.name == "pageInfo":
                for info in selection.selections:
                    if isinstance(info, Fragment) or info.name not in PAGE_INFO_FIELDS:
                        name = getattr(info, "name", "...")
                        raise GraphQLError(
                            f"Field '{name}' doesn't exist on type 'PageInfo'",
                            code="undefinedField",
                        )
            else:
                raise GraphQLError(
                    f"Field '{selection.name}' doesn't exist on type '{node_type}Connection'",
                    code="undefinedField",
                )
        return cost

    # Execution, with the actual cost.

    def run(
        self, type_name: str, obj: Any, selections: Sequence[Field | Fragment]
    ) -> tuple[dict[str, Any], int]:
        out: dict[str, Any] = {}
        cost = 0
        for selection in selections:
            if isinstance(selection, Fragment):
                condition = selection.type_condition
                if condition is None or condition == typename(obj):
                    data, child_cost = self.run(condition or type_name, obj, selection.selections)
                    out.update(data)
                    cost += child_cost
                continue
            definition = self.field_def(type_name, selection)
            value = definition.resolve(obj, self.arguments(selection))
            if definition.type in SCALARS:
                out[selection.key] = value
                continue
            if type_name == "Mutation":
                data, _ = self.run(definition.type, value, selection.selections)
                out[selection.key] = data
                cost += MUTATION_COST
            elif definition.shape == "connection":
                out[selection.key], child_cost = self.connection(
                    definition.type, value, selection.selections
                )
                cost += 2 + child_cost
            elif definition.shape == "list":
                items: list[dict[str, Any] | None] = []
                costs: list[int] = []
                for item in value:
                    if item is None:
                        items.append(None)
                        continue
                    item_type = typename(item) if definition.type == "Node" else definition.type
                    data, child_cost = self.run(item_type, item, selection.selections)
                    items.append(data)
                    costs.append(1 + child_cost)
                out[selection.key] = items
                if definition.type == "Node":
                    cost += sum(costs)
                else:
                    cost += max(costs, default=1)
            elif value is None:
                out[selection.key] = None
            else:
                item_type = typename(value) if definition.type == "Node" else definition.type
                data, child_cost = self.run(item_type, value, selection.selections)
                out[selection.key] = data
                cost += self.object_cost(type_name, selection.name) + child_cost
        return out, cost

    def connection(
        self, node_type: str, page: Page, selections: Sequence[Field | Fragment]
    ) -> tuple[dict[str, Any], int]:
        out: dict[str, Any] = {}
        cost = 0
        for selection in selections:
            assert isinstance(selection, Field)
            if selection.name == "nodes":
                runs = [self.run(node_type, item, selection.selections) for item in page.items]
                out[selection.key] = [data for data, _ in runs]
                cost = max(cost, sum(1 + child for _, child in runs))
            elif selection.name == "edges":
                edges = []
                total = 0
                for item, cursor in zip(page.items, page.cursors, strict=True):
                    edge: dict[str, Any] = {}
                    for edge_field in selection.selections:
                        assert isinstance(edge_field, Field)
                        if edge_field.name == "cursor":
                            edge[edge_field.key] = cursor
                        else:
                            data, child = self.run(node_type, item, edge_field.selections)
                            edge[edge_field.key] = data
                            total += 1 + child
                    edges.append(edge)
                out[selection.key] = edges
                cost = max(cost, total)
            else:
                info = {
                    "hasNextPage": page.has_next_page,
                    "hasPreviousPage": page.has_previous_page,
                    "startCursor": page.cursors[0] if page.cursors else None,
                    "endCursor": page.cursors[-1] if page.cursors else None,
                }
                out[selection.key] = {
                    child.key: info[child.name]
                    for child in selection.selections
                    if isinstance(child, Field)
                }
        return out, cost
