"""Bug injection: one small AST edit (an operator or a constant) inside one chosen function."""

from __future__ import annotations

import ast
import dataclasses
from typing import Iterator

_COMPARE_SWAPS = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
                  ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In}
_ARITH_SWAPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Add, ast.Mod: ast.FloorDiv,
                ast.Div: ast.FloorDiv}
_BOOL_SWAPS = {ast.And: ast.Or, ast.Or: ast.And}

OPERATORS = ("compare", "arith", "constant", "boolop", "variable")


@dataclasses.dataclass(frozen=True)
class Mutation:
    operator: str        # one of OPERATORS
    function: str        # the function it changes
    site: int            # index among that operator's sites in the function, in walk order
    description: str     # e.g. "< -> <=" (for metadata, never shown to the agent)


def _function(tree: ast.Module, name: str) -> ast.FunctionDef:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise ValueError(f"no top-level function {name!r} to mutate")


def _variable_sites(func: ast.FunctionDef) -> list[tuple[ast.Name, str]]:
    """(read of a parameter, another parameter to read instead): the variable-misuse bug."""
    params = [a.arg for a in func.args.args]
    sites = []
    for node in ast.walk(func):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in params:
            sites += [(node, other) for other in params if other != node.id]
    return sites


def _sites(func: ast.FunctionDef, operator: str) -> list:
    if operator == "variable":
        return _variable_sites(func)
    sites: list[ast.AST] = []
    for node in ast.walk(func):
        if operator == "compare" and isinstance(node, ast.Compare) and type(node.ops[0]) in _COMPARE_SWAPS:
            sites.append(node)
        elif operator == "arith" and isinstance(node, (ast.BinOp, ast.AugAssign)) \
                and type(node.op) in _ARITH_SWAPS:
            sites.append(node)
        elif operator == "constant" and isinstance(node, ast.Constant) \
                and type(node.value) is int:
            sites.append(node)
        elif operator == "boolop" and isinstance(node, ast.BoolOp) and type(node.op) in _BOOL_SWAPS:
            sites.append(node)
    return sites


def candidate_mutations(source: str, function: str) -> Iterator[Mutation]:
    """Every single-site mutation of `function`, in a stable order."""
    func = _function(ast.parse(source), function)
    for operator in OPERATORS:
        for site, node in enumerate(_sites(func, operator)):
            yield Mutation(operator, function, site, _describe(operator, node))


def _describe(operator: str, node) -> str:
    if operator == "variable":
        return f"{node[0].id} -> {node[1]}"
    if operator == "compare":
        op = type(node.ops[0])
        return f"{op.__name__} -> {_COMPARE_SWAPS[op].__name__}"
    if operator == "arith":
        op = type(node.op)
        return f"{op.__name__} -> {_ARITH_SWAPS[op].__name__}"
    if operator == "constant":
        return f"{node.value} -> {node.value + 1}"
    op = type(node.op)
    return f"{op.__name__} -> {_BOOL_SWAPS[op].__name__}"


def apply_mutation(source: str, mutation: Mutation) -> str:
    """The module source with the mutation applied (formatted by ast.unparse, like the input
    should be: callers normalise the original the same way so the diff is just the bug)."""
    tree = ast.parse(source)
    node = _sites(_function(tree, mutation.function), mutation.operator)[mutation.site]
    if mutation.operator == "compare":
        node.ops[0] = _COMPARE_SWAPS[type(node.ops[0])]()
    elif mutation.operator == "arith":
        node.op = _ARITH_SWAPS[type(node.op)]()
    elif mutation.operator == "constant":
        node.value = node.value + 1
    elif mutation.operator == "variable":
        name_node, other = node
        name_node.id = other
    else:
        node.op = _BOOL_SWAPS[type(node.op)]()
    return normalise(ast.unparse(tree))


def normalise(source: str) -> str:
    """Canonical formatting (ast round trip) so original and mutant differ only at the bug."""
    return ast.unparse(ast.parse(source)) + "\n"
