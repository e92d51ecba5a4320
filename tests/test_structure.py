"""The code's shape: no import cycles, small modules and functions, one door to MLflow, and
metric and tag names with one home.

Import cycles are found on the source (ast), so that an import inside a function, which Python
resolves late and which therefore hides a cycle from a plain `import`, counts as well. Only
imports under `if TYPE_CHECKING:` are left out: they never run.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from analysis import comparisons, compute, frames, plots, report, tables
from cifar_mlflow import schema

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cifar_mlflow", "analysis")
MAX_MODULE_LINES = 350
MAX_FUNCTION_LINES = 60  # a function reads top to bottom in one screen


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
    """errors → models.mlp runs models/__init__, whose registry imports errors: a cycle."""
    config = "cifar_mlflow.errors"
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


# The modules that may import MLflow, and why. Everything else reaches the tracking server
# through `cifar_mlflow.tracking` (training, sweeps, search). `cifar_mlflow.server` is not
# here on purpose: it starts `mlflow server` as a program and never imports MLflow itself.
MLFLOW_DOORS = {
    "cifar_mlflow.tracking": "every tracking-server call of training, sweeps and search",
    "cifar_mlflow.registry": "the Model Registry: versions and aliases of the logged models",
    "analysis.query": "the analysis' own read-only door (plus logging its figures)",
    "cifar_mlflow.classifier": "the model's loader module answers a bad request with MLflow's 400",
    "cifar_mlflow.prediction": "asks a loaded model (tracking.model_loading loads it by URI)",
}
# MLflow's "fluent" API keeps a global active run per thread; library code names its run
# instead (Ray threads and sweeps log to several runs at once).
FLUENT_RUN_CALLS = {
    "start_run", "active_run", "end_run", "last_active_run", "set_experiment", "log_metric",
    "log_metrics", "log_param", "log_params", "set_tag", "set_tags", "log_artifact",
    "log_artifacts", "log_text", "log_dict", "log_figure", "log_input",
}  # fmt: skip


def _door(module: str) -> str | None:
    return next((door for door in MLFLOW_DOORS if f"{module}.".startswith(f"{door}.")), None)


def mlflow_imports(module: str) -> list[str]:
    """`import mlflow…` / `from mlflow… import` lines of `module`, as `line: name`."""
    path = MODULES[module]
    found = []
    for node in _imports(ast.parse(path.read_text(), str(path))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
        found += [
            f"{node.lineno}: {name}" for name in names if name and name.split(".")[0] == "mlflow"
        ]
    return found


def fluent_run_calls(module: str) -> list[str]:
    """`mlflow.start_run(...)`-like uses of the global active run in `module`."""
    path = MODULES[module]
    return [
        f"{node.lineno}: mlflow.{node.attr}"
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Attribute)
        and node.attr in FLUENT_RUN_CALLS
        and isinstance(node.value, ast.Name)
        and node.value.id == "mlflow"
    ]


def test_the_door_rule_sees_imports_and_fluent_calls() -> None:
    assert mlflow_imports("cifar_mlflow.tracking.client")
    assert mlflow_imports("analysis.query")
    assert not mlflow_imports("cifar_mlflow.engine")
    assert _door("cifar_mlflow.tracking.pages") == "cifar_mlflow.tracking"
    assert _door("cifar_mlflow.trackingx") is None
    assert set(MLFLOW_DOORS) <= {_door(m) for m in MODULES}, "a door that is no module"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_mlflow_is_imported_only_behind_its_doors(module: str) -> None:
    if _door(module) is None:
        assert mlflow_imports(module) == [], f"{module} imports MLflow outside the doors"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_library_module_uses_the_global_active_run(module: str) -> None:
    assert fluent_run_calls(module) == [], module


def functions(module: str) -> dict[str, int]:
    """`module.Class.function` → its number of lines, for every function of `module`."""
    found = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                found[f"{prefix}.{child.name}"] = child.end_lineno - child.lineno + 1
                visit(child, f"{prefix}.{child.name}")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}.{child.name}")

    visit(ast.parse(MODULES[module].read_text()), module)
    return found


FUNCTIONS = {name: lines for module in MODULES for name, lines in functions(module).items()}


def test_the_function_walk_finds_methods_and_nested_functions() -> None:
    assert FUNCTIONS["cifar_mlflow.engine.fit"] > 10
    assert "cifar_mlflow.search.trials.SampledTrials.tell" in FUNCTIONS


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_no_function_is_over_60_lines(function: str) -> None:
    assert FUNCTIONS[function] <= MAX_FUNCTION_LINES, f"{function}: {FUNCTIONS[function]} lines"


METRICS = {*schema.EPOCH_METRICS, *schema.FINAL_METRICS}


def test_epoch_and_final_metric_names_do_not_collide() -> None:
    # Final metrics are logged at step 0, epochs at steps 1..N: one name cannot be both.
    assert not set(schema.EPOCH_METRICS) & set(schema.FINAL_METRICS)


@pytest.mark.parametrize(
    ("name", "metrics"),
    [
        ("frames.SUMMARY_METRICS", frames.SUMMARY_METRICS),
        ("frames.TABLE1_METRICS", frames.TABLE1_METRICS),
        ("comparisons.METRICS", (*comparisons.METRICS, comparisons.SPEED_METRIC)),
        ("compute.HISTORY_METRICS", compute.HISTORY_METRICS),
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


# A metric or tag name the code spells out is one the schema cannot rename. Names without an
# underscore or a dot ("model", "seed", "lr", "role", ...) are left out: they are ordinary words
# and the config's own field names, found in every message.
SCHEMA_NAMES = {
    value
    for key, value in vars(schema).items()
    if key.startswith(("TAG_", "METRIC_")) and isinstance(value, str)
} | METRICS
SPELLED_NAMES = sorted(name for name in SCHEMA_NAMES if "_" in name or "." in name)
NAME_PATTERN = re.compile(
    r"(?<![\w])(?:metrics\.|tags\.|params\.)?("
    + "|".join(map(re.escape, sorted(SPELLED_NAMES, key=len, reverse=True)))
    + r")(?![\w])"
)
NAME_FOLDERS = ("cifar_mlflow", "analysis", "tests", "benchmarks")


def _docstrings(tree: ast.AST) -> set[int]:
    kinds = (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, kinds)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }


def spelled_schema_names(source: str) -> list[str]:
    """`line: name` for each schema name inside a string of `source` (docstrings aside)."""
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    return [
        f"{node.lineno}: {match}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        for match in NAME_PATTERN.findall(node.value)
    ]


def test_the_name_scan_finds_literals_and_f_strings_but_not_docstrings() -> None:
    source = (
        '"""Ranked by best_valid_acc."""\n'
        'a = {"best_valid_acc": 1, "mlflow.parentRunId": 2}\n'
        'b = f"metrics.valid_acc > {x}"\n'
        'c = "invalid_accent valid_accuracy"\n'
    )
    assert spelled_schema_names(source) == [
        "2: best_valid_acc",
        "2: mlflow.parentRunId",
        "3: valid_acc",
    ]


@pytest.mark.parametrize(
    "path",
    sorted(
        path.relative_to(ROOT).as_posix()
        for folder in NAME_FOLDERS
        for path in (ROOT / folder).rglob("*.py")
        if path.name not in ("schema.py", "test_structure.py")
    ),
)
def test_metric_and_tag_names_are_spelled_only_in_the_schema(path: str) -> None:
    assert spelled_schema_names((ROOT / path).read_text()) == [], "use the schema's constant"


def test_the_schema_constants_are_the_metric_records_fields() -> None:
    constants = {value for key, value in vars(schema).items() if key.startswith("METRIC_")} - {
        schema.METRIC_TRIALS_FINISHED,
        schema.METRIC_TRIALS_FAILED,
    }
    constants -= {schema.METRIC_TRIALS_REUSED, schema.METRIC_TRIALS_STOPPED}
    assert constants == METRICS
