"""
The layering of the package, read from its source with ``ast`` (nothing is imported): the op under
``sb3_stpn/ops/`` depends on no RL library and on nothing of ``sb3_stpn`` outside ``sb3_stpn.ops``, and its
modules import one another without a circle.

An edge ``a -> b`` is an import in ``a`` of the module ``b`` of the package: ``import b``, ``from b import
name``, or ``from p import b`` where ``b`` is the submodule ``p.b``. Imports inside functions count too: a
deferred import hides a circle from the import machinery, not from the design (``dispatch`` imports
``fused_triton`` in a function; ``fused_triton`` importing ``dispatch`` back, as it once did, is a circle).
Importing ``p.b`` also runs the ``__init__`` of each package above ``b``: those count as edges, except the
packages that hold the importing module itself (a submodule of a package being initialised imports its
siblings without waiting for that ``__init__``).
"""

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = "sb3_stpn"
OPS = f"{PACKAGE}.ops"
SOURCE = Path(__file__).resolve().parents[2] / PACKAGE
# What the op must not import: the RL stack and the CLI's tools
FORBIDDEN_IN_OPS = ("stable_baselines3", "sb3_contrib", "gymnasium", "rl_zoo3", "optuna")


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(SOURCE.rglob("*.py"))}


def is_within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def imports(module: str) -> Iterator[tuple[str, list[str], int]]:
    """Each import statement of ``module`` as (the module it names, the names it takes from it, line), absolute."""
    path = MODULES[module]
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                # Relative: from the module's package (a package's __init__ is its own package)
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            yield base, [alias.name for alias in node.names], node.lineno


def edges(module: str) -> Iterator[tuple[str, int]]:
    """The modules of the package that ``module`` imports (see the module docstring), with the line."""
    for target, names, line in imports(module):
        if not is_within(target, PACKAGE):
            continue
        submodules = [f"{target}.{name}" for name in names if f"{target}.{name}" in MODULES]
        reached = submodules + ([target] if len(submodules) < len(names) or not names else [])
        for name in reached:
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):
                prefix = ".".join(parts[:depth])
                if prefix in MODULES and (prefix == name or not is_within(module, prefix)):
                    yield prefix, line


GRAPH = {module: sorted(set(edges(module))) for module in MODULES}


def find_cycle(nodes: set[str]) -> list[tuple[str, int]] | None:
    """A circle of imports among ``nodes``, as the edges ``(module, line of its import of the next)``; None if none."""
    state: dict[str, str] = {}  # "open" while on the path, "done" after
    path: list[tuple[str, int]] = []

    def visit(module: str) -> list[tuple[str, int]] | None:
        state[module] = "open"
        for target, line in GRAPH[module]:
            if target not in nodes or state.get(target) == "done":
                continue
            path.append((module, line))
            if state.get(target) == "open":
                start = next(i for i, (name, _) in enumerate(path) if name == target)
                return path[start:]
            if found := visit(target):
                return found
            path.pop()
        state[module] = "done"
        return None

    for module in sorted(nodes):
        if module not in state and (found := visit(module)):
            return found
    return None


def describe(cycle: list[tuple[str, int]]) -> str:
    steps = [f"{module} (line {line})" for module, line in cycle]
    return " -> ".join([*steps, cycle[0][0]])


def test_the_package_is_read() -> None:
    """The walk sees the op and its edges (else the tests below would pass on nothing)."""
    assert {f"{OPS}.stpn.config", f"{OPS}.stpn.dispatch", f"{OPS}.stpn.fused_triton"} <= MODULES.keys()
    dispatch_imports = {target for target, _ in GRAPH[f"{OPS}.stpn.dispatch"]}
    assert {f"{OPS}.stpn.config", f"{OPS}.stpn.fused_cpp", f"{OPS}.stpn.fused_triton"} <= dispatch_imports
    # sb3_stpn.common.stpn imports the op through its package: that __init__ counts
    assert f"{OPS}.stpn" in {target for target, _ in GRAPH[f"{PACKAGE}.common.stpn"]}


@pytest.mark.parametrize("module", [name for name in MODULES if is_within(name, OPS)])
def test_the_op_imports_no_rl_library_and_nothing_of_the_package_outside_it(module: str) -> None:
    wrong = [
        f"line {line}: {target}"
        for target, _, line in imports(module)
        if target.split(".")[0] in FORBIDDEN_IN_OPS or (is_within(target, PACKAGE) and not is_within(target, OPS))
    ]
    assert not wrong, f"{module} imports outside the op: {', '.join(wrong)}"


def test_the_op_imports_no_circle() -> None:
    cycle = find_cycle({name for name in MODULES if is_within(name, OPS)})
    assert cycle is None, f"a circle of imports: {describe(cycle)}"


def test_find_cycle_finds_the_old_circle(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check itself: fused_triton importing dispatch again (as the old stpn_triton did) is reported."""
    triton, dispatch = f"{OPS}.stpn.fused_triton", f"{OPS}.stpn.dispatch"
    monkeypatch.setitem(GRAPH, triton, [*GRAPH[triton], (dispatch, 1)])
    cycle = find_cycle({name for name in MODULES if is_within(name, OPS)})
    assert cycle is not None and {module for module, _ in cycle} == {triton, dispatch}, cycle


def test_the_package_imports_no_circle() -> None:
    """Beyond the op: the glue, the CLI and the zoo too."""
    cycle = find_cycle(set(MODULES))
    assert cycle is None, f"a circle of imports: {describe(cycle)}"
