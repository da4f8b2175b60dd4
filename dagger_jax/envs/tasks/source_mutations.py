"""Bug injection into real source files that leaves every byte outside the edit as it was.

`mutations.py` rewrites a whole module through `ast.unparse`, which is right for our generated
code but would turn a real package's gold patch into a reformatted file. Here each mutation is
a small text edit at the changed node's own position (an operator token, a number, a name, a
condition wrapped in `not (...)`), so the gold patch is a one-line diff of the original file.
Every edit is checked: the edited text must parse to exactly the AST the mutation means.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from typing import Iterator, Union

FunctionNode = Union[ast.FunctionDef, ast.AsyncFunctionDef]

# Operator tokens and what each becomes. Multi-word tokens match any whitespace between words.
_COMPARE = {ast.Lt: ("<", "<="), ast.LtE: ("<=", "<"), ast.Gt: (">", ">="), ast.GtE: (">=", ">"),
            ast.Eq: ("==", "!="), ast.NotEq: ("!=", "=="), ast.In: ("in", "not in"),
            ast.NotIn: ("not in", "in"), ast.Is: ("is", "is not"), ast.IsNot: ("is not", "is")}
_COMPARE_AST = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
                ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In,
                ast.Is: ast.IsNot, ast.IsNot: ast.Is}
_ARITH = {ast.Add: ("+", "-", ast.Sub), ast.Sub: ("-", "+", ast.Add),
          ast.Mult: ("*", "+", ast.Add), ast.Mod: ("%", "//", ast.FloorDiv),
          ast.Div: ("/", "//", ast.FloorDiv)}
_BOOL = {ast.And: ("and", "or", ast.Or), ast.Or: ("or", "and", ast.And)}
# Reading `self` as another parameter (or the reverse) only makes noise, not a plausible bug.
_RECEIVERS = ("self", "cls")

OPERATORS = ("compare", "arith", "boolop", "constant", "condition", "variable")


class MutationError(ValueError):
    """A mutation could not be applied to the given source (names the function and line)."""


@dataclasses.dataclass(frozen=True)
class SourceMutation:
    """One single-site bug in one function of a module, addressed so it can be re-applied."""

    function: str        # qualified name, e.g. "Inflector.camelize"
    function_line: int   # line of its `def` (two branches may define the same name)
    operator: str        # one of OPERATORS
    site: int            # index among that operator's sites in the function, in walk order
    line: int            # line of the edit (for metadata, never shown to the agent)
    description: str     # e.g. "< -> <="


@dataclasses.dataclass(frozen=True)
class _Edit:
    start: int           # character offsets into the module source
    end: int
    text: str


def functions(tree: ast.Module) -> Iterator[tuple[str, FunctionNode]]:
    """(qualified name, node) of every module-level function and method, in source order.

    Looks inside module-level `if`/`try`/`with` blocks (version switches such as six's) and into
    classes, but not into function bodies: nested helpers are mutated as part of their parent.
    """
    def visit(body: list[ast.stmt], prefix: str) -> Iterator[tuple[str, FunctionNode]]:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield prefix + node.name, node
            elif isinstance(node, ast.ClassDef):
                yield from visit(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                for block in ("body", "orelse", "finalbody", "handlers"):
                    for child in getattr(node, block, []):
                        yield from visit(child.body if isinstance(child, ast.excepthandler)
                                         else [child], prefix)
    yield from visit(tree.body, "")


class _Text:
    """The module source with (line, UTF-8 byte column) -> character offset conversion."""

    def __init__(self, source: str):
        self.source = source
        self._lines = source.splitlines(keepends=True)
        self._starts = [0]
        for line in self._lines:
            self._starts.append(self._starts[-1] + len(line))

    def offset(self, line: int, col_bytes: int) -> int:
        text = self._lines[line - 1] if line - 1 < len(self._lines) else ""
        return self._starts[line - 1] + len(text.encode("utf-8")[:col_bytes].decode("utf-8", "replace"))

    def start(self, node: ast.AST) -> int:
        return self.offset(node.lineno, node.col_offset)

    def end(self, node: ast.AST) -> int:
        return self.offset(node.end_lineno, node.end_col_offset)


def _token_edit(text: _Text, left: ast.AST, right: ast.AST, token: str, new: str) -> _Edit | None:
    """Replaces the operator `token` in the gap between two operands, if the gap is only that
    token, parentheses and whitespace (no comment or other code we might mangle)."""
    start, end = text.end(left), text.start(right)
    gap = text.source[start:end]
    if "#" in gap or re.sub(r"[\s()\\]", "", gap) != token.replace(" ", ""):
        return None
    pattern = r"\s+".join(re.escape(word) for word in token.split())
    if token[0].isalpha():
        pattern = rf"(?<![\w]){pattern}(?![\w])"
    match = re.search(pattern, gap)
    if match is None:
        return None
    return _Edit(start + match.start(), start + match.end(), new)


def _is_text(node: ast.AST) -> bool:
    return isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant)
                                               and isinstance(node.value, (str, bytes)))


def _parameters(func: FunctionNode) -> list[str]:
    args = func.args
    return [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs if a.arg not in _RECEIVERS]


def _sites(text: _Text, func: FunctionNode, operator: str) -> list[tuple[list[_Edit], str, ast.AST, object]]:
    """(edits, description, node, payload) of every site of `operator` in `func`, walk order.

    Sites whose text cannot be edited safely are left out, so a site index always refers to
    the same place for the same source.
    """
    sites: list[tuple[list[_Edit], str, ast.AST, object]] = []
    params = _parameters(func) if operator == "variable" else []
    # Before 3.12 the positions of nodes inside f-strings are unreliable: leave them alone.
    in_fstring = {id(n) for j in ast.walk(func) if isinstance(j, ast.JoinedStr) for n in ast.walk(j)}
    for node in ast.walk(func):
        if id(node) in in_fstring:
            continue
        if operator == "compare" and isinstance(node, ast.Compare) and type(node.ops[0]) in _COMPARE:
            token, new = _COMPARE[type(node.ops[0])]
            edit = _token_edit(text, node.left, node.comparators[0], token, new)
            if edit:
                sites.append(([edit], f"{token} -> {new}", node, None))
        elif operator == "arith" and isinstance(node, ast.BinOp) and type(node.op) in _ARITH \
                and not _is_text(node.left):  # "..." % x and "a" + b are formatting, not maths
            token, new, _ = _ARITH[type(node.op)]
            edit = _token_edit(text, node.left, node.right, token, new)
            if edit:
                sites.append(([edit], f"{token} -> {new}", node, None))
        elif operator == "arith" and isinstance(node, ast.AugAssign) and type(node.op) in _ARITH:
            token, new, _ = _ARITH[type(node.op)]
            edit = _token_edit(text, node.target, node.value, token + "=", new + "=")
            if edit:
                sites.append(([edit], f"{token}= -> {new}=", node, None))
        elif operator == "boolop" and isinstance(node, ast.BoolOp):
            token, new, _ = _BOOL[type(node.op)]
            edits = [_token_edit(text, a, b, token, new) for a, b in zip(node.values, node.values[1:])]
            if all(edits):
                sites.append((edits, f"{token} -> {new}", node, None))
        elif operator == "constant" and isinstance(node, ast.Constant) and type(node.value) is int:
            sites.append(([_Edit(text.start(node), text.end(node), str(node.value + 1))],
                          f"{node.value} -> {node.value + 1}", node, None))
        elif operator == "condition" and isinstance(node, ast.If):
            start, end = text.start(node.test), text.end(node.test)
            negated = isinstance(node.test, ast.UnaryOp) and isinstance(node.test.op, ast.Not)
            drop = re.match(r"not\s*", text.source[start:end]) if negated else None
            if drop:  # `if not c` loses its `not` rather than becoming `if not (not c)`
                sites.append(([_Edit(start, start + drop.end(), "")], "if not c -> if c", node, None))
            elif not negated:
                sites.append(([_Edit(start, start, "not ("), _Edit(end, end, ")")],
                              "if c -> if not (c)", node, None))
        elif operator == "variable" and isinstance(node, ast.Name) \
                and isinstance(node.ctx, ast.Load) and node.id in params:
            for other in params:
                if other != node.id:
                    sites.append(([_Edit(text.start(node), text.end(node), other)],
                                  f"{node.id} -> {other}", node, other))
    return sites


def _mutate_node(operator: str, node: ast.AST, payload: object) -> None:
    """The AST-level meaning of a site's edit, for checking the text edit against."""
    if operator == "compare":
        node.ops[0] = _COMPARE_AST[type(node.ops[0])]()
    elif operator == "arith":
        node.op = _ARITH[type(node.op)][2]()
    elif operator == "boolop":
        node.op = _BOOL[type(node.op)][2]()
    elif operator == "constant":
        node.value = node.value + 1
    elif operator == "condition":
        negated = isinstance(node.test, ast.UnaryOp) and isinstance(node.test.op, ast.Not)
        node.test = node.test.operand if negated else ast.UnaryOp(op=ast.Not(), operand=node.test)
    else:
        node.id = payload


def _find(tree: ast.Module, name: str, line: int) -> FunctionNode:
    for qualname, node in functions(tree):
        if qualname == name and node.lineno == line:
            return node
    raise MutationError(f"no function {name!r} defined at line {line}")


def candidate_mutations(source: str, function: str, function_line: int) -> list[SourceMutation]:
    """Every single-site mutation of one function, in a stable order."""
    text = _Text(source)
    func = _find(ast.parse(source), function, function_line)
    return [SourceMutation(function, function_line, operator, site, node.lineno, description)
            for operator in OPERATORS
            for site, (_, description, node, _) in enumerate(_sites(text, func, operator))]


def apply_mutation(source: str, mutation: SourceMutation) -> str:
    """`source` with the mutation's text edit made; nothing else in the file changes."""
    where = f"{mutation.function} (line {mutation.function_line}) {mutation.operator}#{mutation.site}"
    text, tree = _Text(source), ast.parse(source)
    sites = _sites(text, _find(tree, mutation.function, mutation.function_line), mutation.operator)
    if mutation.site >= len(sites):
        raise MutationError(f"{where}: the function has only {len(sites)} such sites")
    edits, _, node, payload = sites[mutation.site]
    out = source
    for edit in sorted(edits, key=lambda e: e.start, reverse=True):
        out = out[:edit.start] + edit.text + out[edit.end:]
    _mutate_node(mutation.operator, node, payload)
    try:
        same = ast.dump(ast.parse(out)) == ast.dump(tree)
    except SyntaxError as e:
        raise MutationError(f"{where}: the edit does not parse ({e.msg})") from None
    if not same:
        raise MutationError(f"{where}: the text edit does not give the intended AST")
    return out
