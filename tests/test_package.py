"""The package's seams, read from its source: one version, one Hub caller, one model builder,
no import back up into the package ``__init__``, every third-party import declared."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import sam_deblur_cli
from sam_deblur_cli._version import __version__
from sam_deblur_cli.weights import tomllib

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sam_deblur_cli"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def modules() -> Iterator[tuple[str, ast.Module]]:
    """(path relative to the repository, parsed source) of every library module."""
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(ROOT).as_posix(), ast.parse(path.read_text(encoding="utf-8"))


def imported_modules(tree: ast.Module) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def where(predicate: Callable[[ast.AST], bool]) -> set[str]:
    """The library modules with at least one syntax node that satisfies ``predicate``."""
    return {name for name, tree in modules() if any(predicate(n) for n in ast.walk(tree))}


def test_the_version_is_written_in_one_place() -> None:
    assigned = where(
        lambda n: (
            isinstance(n, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "__version__" for t in n.targets)
        )
    )
    assert assigned == {"sam_deblur_cli/_version.py"}
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert PYPROJECT["tool"]["hatch"]["version"]["path"] == "sam_deblur_cli/_version.py"
    assert sam_deblur_cli.__version__ == __version__
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)*", __version__)


HUB = "sam_deblur_cli/weights/hub.py"


@pytest.mark.parametrize(
    ("top_level", "allowed"),
    [
        ("huggingface_hub", (HUB,)),
        ("httpx2", (HUB,)),
        ("tqdm", (HUB,)),
        ("segment_anything", ("sam_deblur_cli/masks/", "sam_deblur_cli/weights/models.py")),
    ],
)
def test_only_their_rooms_import_the_hub_client_and_segment_anything(
    top_level: str, allowed: tuple[str, ...]
) -> None:
    importers = {
        name
        for name, tree in modules()
        if any(m.split(".")[0] == top_level for m in imported_modules(tree))
    }
    assert importers and {name for name in importers if not name.startswith(allowed)} == set()
    assert HUB not in allowed or importers == {HUB}


def test_networks_are_built_from_entries_in_one_place() -> None:
    calls = where(
        lambda n: (
            isinstance(n, ast.Call)
            and isinstance(n.func, ast.Name | ast.Attribute)
            and (n.func.id if isinstance(n.func, ast.Name) else n.func.attr) == "build_network"
        )
    )
    registry = where(
        lambda n: (
            isinstance(n, ast.Subscript)
            and isinstance(n.value, ast.Name)
            and n.value.id == "sam_model_registry"
        )
    )
    assert calls == registry == {"sam_deblur_cli/weights/models.py"}


def _absolute(name: str, node: ast.ImportFrom) -> str:
    """The module ``node`` imports from, a relative import resolved against file ``name``."""
    if node.level == 0:
        return node.module or ""
    package = Path(name).parent.parts  # the package a module (or an __init__.py) belongs to
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def test_no_module_imports_a_name_from_the_package_init() -> None:
    offenders = []
    for name, tree in modules():
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or _absolute(name, node) != "sam_deblur_cli":
                continue
            for alias in node.names:
                submodule = PACKAGE / alias.name
                if not (submodule.with_suffix(".py").is_file() or submodule.is_dir()):
                    offenders.append(f"{name}: from sam_deblur_cli import {alias.name}")
    assert offenders == []


def _distribution(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def test_every_third_party_import_is_a_declared_dependency() -> None:
    project = PYPROJECT["project"]
    extras = project.get("optional-dependencies", {})
    runtime_extras = [r for extra, reqs in extras.items() if extra != "test" for r in reqs]
    declared = {_distribution(r) for r in [*project["dependencies"], *runtime_extras]}
    providers = importlib.metadata.packages_distributions()
    missing = set()
    for name, tree in modules():
        for module in imported_modules(tree):
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top == "sam_deblur_cli":
                continue
            dists = {_distribution(d) for d in providers.get(top, [top])}
            if not dists & declared:
                missing.add(f"{top} ({name})")
    assert sorted(missing) == []


# docs/DESIGN.md, "Who may import whom": lower numbers sit higher and may import higher numbers.
LAYERS = {
    "sam_deblur_cli.cli": 1,
    "sam_deblur_cli.train": 2,
    "sam_deblur_cli.batch": 2,
    "sam_deblur_cli.evaluate": 2,
    "sam_deblur_cli.serve": 2,
    "sam_deblur_cli.video": 3,
    "sam_deblur_cli.pipeline": 4,
    "sam_deblur_cli.restore": 5,
    "sam_deblur_cli.masks": 6,
    "sam_deblur_cli.metrics": 6,
    "sam_deblur_cli.naming": 6,
    "sam_deblur_cli.datasets": 6,
    "sam_deblur_cli.weights": 7,
    "sam_deblur_cli.imageio": 7,
    "sam_deblur_cli.checkpoints": 8,
    "sam_deblur_cli.nets": 8,
    "sam_deblur_cli.amg": 9,
    "sam_deblur_cli.files": 9,
    "sam_deblur_cli.devices": 9,
    "sam_deblur_cli.errors": 10,
    "sam_deblur_cli._version": 10,
}


def _layer(module: str) -> tuple[str, int]:
    """The most specific LAYERS entry for ``module``: (its key, its level)."""
    keys = [k for k in LAYERS if module == k or module.startswith(k + ".")]
    key = max(keys, key=len)
    return key, LAYERS[key]


def test_imports_point_down_the_layers() -> None:
    upward = []
    for path, tree in modules():
        name = path[: -len(".py")].replace("/", ".").removesuffix(".__init__")
        if name in ("sam_deblur_cli", "sam_deblur_cli.__main__"):
            continue  # the public re-exports and the entry point sit above everything
        own_key, own = _layer(name)
        for target in imported_modules(tree):
            if not target.startswith("sam_deblur_cli.") or target.startswith(own_key):
                continue
            key, level = _layer(target)
            if level <= own and not key.startswith(own_key):
                upward.append(f"{name} -> {target}")
    assert upward == []


def _module_name(path: str) -> str:
    """``sam_deblur_cli/masks/sam.py`` -> ``sam_deblur_cli.masks.sam`` (a package: its own name)."""
    return path[: -len(".py")].replace("/", ".").removesuffix(".__init__")


def _run_time_imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements under ``node`` that run, inside functions too; only the
    bodies of ``if TYPE_CHECKING:`` are left out (their ``else`` runs)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            for statement in child.orelse:
                yield from _run_time_imports(ast.Module(body=[statement], type_ignores=[]))
        else:
            yield from _run_time_imports(child)


def import_graph() -> dict[str, set[str]]:
    """Each library module -> the library modules it imports when it runs.

    ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to
    ``pkg`` (its ``__init__``); relative imports are resolved against the importing file."""
    trees = {_module_name(path): (path, tree) for path, tree in modules()}
    graph: dict[str, set[str]] = {}
    for name, (path, tree) in trees.items():
        edges = graph.setdefault(name, set())
        for node in _run_time_imports(tree):
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names if alias.name in trees)
                continue
            base = _absolute(path, node).replace("/", ".")
            for alias in node.names:
                if f"{base}.{alias.name}" in trees:
                    edges.add(f"{base}.{alias.name}")
                elif base in trees:
                    edges.add(base)
        edges.discard(name)
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[str]:
    """One ``a -> b -> a`` line for each import edge that closes a loop (a depth-first walk)."""
    cycles: list[str] = []
    done: set[str] = set()

    def visit(module: str, stack: list[str]) -> None:
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if target in stack:
                cycles.append(" -> ".join([*stack[stack.index(target) :], target]))
            elif target not in done:
                visit(target, stack)
        stack.pop()
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            visit(module, [])
    return cycles


def test_the_import_cycle_check_sees_loops_through_functions_and_package_inits() -> None:
    graph = {"p": {"p.a"}, "p.a": {"p.b"}, "p.b": {"p"}, "q": set()}
    assert import_cycles(graph) == ["p -> p.a -> p.b -> p"]
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from x import hidden\n"
        "def f():\n    from sam_deblur_cli import errors\n    import sam_deblur_cli.files\n"
    )
    found = [ast.unparse(n) for n in _run_time_imports(ast.parse(source))]
    assert found == [
        "from typing import TYPE_CHECKING",
        "from sam_deblur_cli import errors",
        "import sam_deblur_cli.files",
    ]


def test_no_import_cycles_inside_the_package() -> None:
    graph = import_graph()
    assert "sam_deblur_cli.masks.sam" in graph["sam_deblur_cli.masks"]  # from pkg import module
    assert import_cycles(graph) == []


LONGEST_COMMAND_FUNCTION = 60  # docs/DESIGN.md, "Where a new command plugs in"


def long_functions(tree: ast.Module, limit: int) -> list[tuple[str, int]]:
    """(name, lines) of each function in ``tree`` longer than ``limit`` lines, counted from
    its ``def`` (decorators left out) to its last line, nested functions included."""
    return [
        (node.name, lines)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (lines := (node.end_lineno or node.lineno) - node.lineno + 1) > limit
    ]


def test_the_length_check_counts_from_def_to_the_last_line() -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(60))
    tree = ast.parse(f"@decorated\ndef long():\n{body}\ndef short():\n    pass\n")
    assert long_functions(tree, 60) == [("long", 61)]
    assert long_functions(tree, 61) == []


def test_commands_stay_thin() -> None:
    long = [
        f"{name}::{function} ({lines} lines)"
        for name, tree in modules()
        if name.startswith("sam_deblur_cli/cli/")
        for function, lines in long_functions(tree, LONGEST_COMMAND_FUNCTION)
    ]
    assert long == []
