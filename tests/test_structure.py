"""The code's shape: imports never go in a circle, modules stay small, metric names have one home.

Import cycles are found on the source (ast), so that an import inside a function, which Python
resolves late and which therefore hides a cycle from a plain `import`, counts as well. Only
imports under `if TYPE_CHECKING:` are left out: they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from analysis import frames, plots, report, tables
from cifar_mlflow import schema

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cifar_mlflow", "analysis")
MAX_MODULE_LINES = 350


def module_files() -> dict[str, Path]:
    """Dotted module name → file, for every module of the project's packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


MODULES = module_files()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement at any depth, except those under `if TYPE_CHECKING:`."""
    found = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                found += _imports(ast.Module(body=[child], type_ignores=[]))
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        found += _imports(node)
    return found


def _resolve(name: str) -> str | None:
    """The project module an imported name lives in: the longest known prefix."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imported_modules(module: str, source: str | None = None) -> set[str]:
    """The project modules that `module` (or `source` standing in for its file) imports.

    Importing `a.b.c` runs `a` and `a.b` first: their `__init__` modules count as imported,
    except the packages `module` itself lies in, which Python has run before it.
    """
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets = set()
    for node in _imports(ast.parse(source or path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            prefix = ".".join(part for part in (base if node.level else "", node.module) if part)
            # `from package import module` imports that module, `from module import name` the
            # module that defines the name.
            names = [
                f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in MODULES else prefix
                for alias in node.names
            ]
        targets |= {found for name in names if (found := _resolve(name)) is not None}
    targets |= {package for target in targets for package in _packages_of(target)}
    return targets - {module, *_packages_of(module)}


def _packages_of(module: str) -> list[str]:
    """The project packages whose `__init__` importing `module` runs: `a` and `a.b` of `a.b.c`."""
    parts = module.split(".")
    return [name for i in range(1, len(parts)) if (name := ".".join(parts[:i])) in MODULES]


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path a → … → a) per strongly connected group of modules that has one."""
    cycles, state = [], dict.fromkeys(graph, "new")

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state[target] == "open":
                cycles.append([*path[path.index(target) :], node, target])
            elif state[target] == "new":
                visit(target, [*path, node])
        state[node] = "done"

    for node in sorted(graph):
        if state[node] == "new":
            visit(node, [])
    return cycles


def test_the_import_walk_sees_function_level_imports_and_skips_type_checking_ones() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import hidden\nelse:\n    import shown_else\n"
        "def f():\n    import inner\n"
        "class C:\n    def g(self):\n        from . import deep\n"
    )
    names = [alias.name for node in _imports(tree) for alias in node.names]
    assert names == ["TYPE_CHECKING", "shown_else", "inner", "deep"]


def test_cycle_finder_reports_a_cycle_and_accepts_a_tree() -> None:
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert import_cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_the_walk_finds_the_project_imports_it_should() -> None:
    # Absolute, relative and function-level imports all land in the graph.
    assert "cifar_mlflow.schema" in imported_modules("analysis.frames")
    assert "cifar_mlflow.sweeps.trials" in imported_modules("cifar_mlflow.sweeps.ray_executor")
    assert "cifar_mlflow.sweeps.ray_executor" in imported_modules("cifar_mlflow.sweeps.sweep")


def test_a_cycle_through_a_package_init_is_found() -> None:
    """config → models.mlp runs models/__init__, which imports config: a cycle."""
    config = "cifar_mlflow.config"
    source = MODULES[config].read_text() + (
        "\n\ndef _model():\n    from cifar_mlflow.models.mlp import MLP\n\n    return MLP\n"
    )
    assert "cifar_mlflow.models" in imported_modules(config, source)
    graph = {module: imported_modules(module) for module in MODULES}
    assert import_cycles(graph) == []
    graph[config] = imported_modules(config, source)
    (cycle,) = import_cycles(graph)
    assert config in cycle and "cifar_mlflow.models" in cycle


def test_a_module_importing_a_sibling_does_not_cycle_through_its_own_package() -> None:
    # models/mlp.py importing models.x: models/__init__ has already run, whatever it imports.
    assert "cifar_mlflow.models" not in imported_modules(
        "cifar_mlflow.models.mlp", ("from cifar_mlflow.models.resnet import ResNet18\n")
    )


def test_no_import_cycles_in_the_packages() -> None:
    graph = {module: imported_modules(module) for module in MODULES}
    assert import_cycles(graph) == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_over_350_lines(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{module}: {lines} lines"


METRICS = {*schema.EPOCH_METRICS, *schema.FINAL_METRICS}


def test_epoch_and_final_metric_names_do_not_collide() -> None:
    # Final metrics are logged at step 0, epochs at steps 1..N: one name cannot be both.
    assert not set(schema.EPOCH_METRICS) & set(schema.FINAL_METRICS)


@pytest.mark.parametrize(
    ("name", "metrics"),
    [
        ("frames.SUMMARY_METRICS", frames.SUMMARY_METRICS),
        ("frames.TABLE1_METRICS", frames.TABLE1_METRICS),
        *(
            (f"{name}.source", [column.source for column in columns if column.spread])
            for name, columns in (
                ("tables.TABLE1_COLUMNS", tables.TABLE1_COLUMNS),
                ("tables.SUMMARY_COLUMNS", tables.SUMMARY_COLUMNS),
                ("report.BEST_COLUMNS", report.BEST_COLUMNS),
            )
        ),
    ],
)
def test_every_metric_the_analysis_names_is_a_schema_field(name: str, metrics) -> None:
    assert metrics, name
    assert set(metrics) <= METRICS, f"{name}: {set(metrics) - METRICS} not in schema"


def test_curves_show_the_epoch_losses_and_accuracies() -> None:
    assert set(plots.CURVE_METRICS) <= set(schema.EPOCH_METRICS)
