"""Optuna's and Keras's private names are used in two adapter modules only (mtl_suite/tuning/optuna_private.py,
mtl_suite/training/keras_private.py), and every one of them exists in the installed versions. After an upgrade past
the version caps in pyproject.toml, the first tests here name what the new version dropped."""

from __future__ import annotations

import ast
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from mtl_suite.training import keras_private
from mtl_suite.tuning import optuna_private

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "mtl_suite"
ADAPTERS = (PACKAGE / "tuning" / "optuna_private.py", PACKAGE / "training" / "keras_private.py")
LIBRARIES = ("optuna", "keras")
# A module path inside a library that the library does not export: a `_name` part, or Keras's `keras.src` tree.
PRIVATE_MODULE = re.compile(r"^(optuna|keras)(\.\w+)*\.(_[A-Za-z0-9]\w*|src)(\.|$)")
# What the adapters are there for; the scan must find each of these in them.
ADAPTED = {"_storage", "_study_id", "_trial_id", "_study", "_get_bracket_id", "_pruners", "_n_brackets",
           "_trial_allocation_budgets", "_total_trial_allocation_budget", "optuna.storages._heartbeat",
           "_flatten_layers", "_seed_generators"}


@pytest.mark.parametrize("adapter", [optuna_private, keras_private], ids=["optuna", "keras"])
def test_every_private_name_an_adapter_relies_on_exists(adapter):
    missing = adapter.missing_attributes()
    assert missing == [], (f"the installed {adapter.__name__.split('.')[-1].split('_')[0]} lacks private names "
                           f"{adapter.__name__} relies on: {missing}; adapt the module, then move the version cap")


def test_a_dropped_private_name_is_named(monkeypatch):
    import keras
    import optuna

    monkeypatch.delattr(optuna.pruners.HyperbandPruner, "_get_bracket_id")
    monkeypatch.delattr(keras.layers.Layer, "_flatten_layers")
    assert "optuna.pruners.HyperbandPruner._get_bracket_id" in optuna_private.missing_attributes()
    assert keras_private.missing_attributes() == ["keras.layers.Layer._flatten_layers"]


# --- the scan: no private Optuna or Keras name outside the adapters -----------------------------------------------

@dataclass(frozen=True)
class Use:
    path: str
    line: int
    name: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.name}"


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def library_methods() -> set[str]:
    """Every private method name Optuna and Keras define, read from their installed source (an override of one
    is a use of it)."""
    names: set[str] = set()
    for library in LIBRARIES:
        for path in Path(importlib.util.find_spec(library).origin).parent.rglob("*.py"):
            text = path.read_text(encoding="utf-8", errors="replace")
            names.update(n for n in re.findall(r"^\s*def (_\w+)", text, re.M) if is_private(n))
    return names


def own_names(paths: list[Path]) -> set[str]:
    """Private names mtl_suite defines itself (functions, classes, assigned attributes and variables, import
    aliases): accessing those is not a library's private API."""
    names: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    names.update(_target_names(target))
            elif isinstance(node, ast.alias):
                names.add(node.asname or node.name.split(".")[0])
    return {name for name in names if is_private(name)}


def _target_names(target: ast.expr) -> list[str]:
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, ast.Attribute):
        return [target.attr]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [name for element in target.elts for name in _target_names(element)]
    return []


def private_uses(source: str, path: str, own: set[str], known: set[str], methods: set[str]) -> list[Use]:
    """Private Optuna/Keras names the source uses: attribute accesses (also through getattr/hasattr/setattr) of a
    private name mtl_suite does not define or that is `known` to be a library's, overrides of a library's private
    method, and imports or module paths of a library's private modules."""
    uses: list[Use] = []
    foreign = lambda name: is_private(name) and (name in known or name not in own)  # noqa: E731
    for node in ast.walk(ast.parse(source, path)):
        name = _used_name(node)
        if name is not None and foreign(name):
            uses.append(Use(path, node.lineno, name))
        if isinstance(node, ast.ClassDef):
            uses += [Use(path, item.lineno, item.name) for item in node.body
                     if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and is_private(item.name)
                     and (item.name in known or item.name in methods)]
        uses += [Use(path, node.lineno, module) for module in _private_modules(node)]
    return sorted(set(uses), key=lambda use: (use.line, use.name))


def _used_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
            and node.func.id in ("getattr", "hasattr", "setattr", "delattr") and len(node.args) > 1 \
            and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
        return node.args[1].value
    return None


def _private_modules(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if PRIVATE_MODULE.match(alias.name)]
    if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in LIBRARIES:
        if PRIVATE_MODULE.match(node.module):
            return [node.module]
        return [f"{node.module}.{alias.name}" for alias in node.names if is_private(alias.name)]
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and PRIVATE_MODULE.match(node.value):
        return [node.value]
    return []


def unparsable(paths: list[Path]) -> list[str]:
    broken = []
    for path in paths:
        try:
            ast.parse(path.read_text(), str(path))
        except SyntaxError as error:
            broken.append(f"{path.relative_to(ROOT)}: {error}")
    return broken


@pytest.fixture(scope="module")
def scan():
    sources = sorted(PACKAGE.rglob("*.py"))
    broken = unparsable(sources)
    others = [path for path in sources if path not in ADAPTERS and not any(
        entry.startswith(f"{path.relative_to(ROOT)}:") for entry in broken)]
    own, methods = own_names(others), library_methods()

    def uses(paths: list[Path], known: set[str]) -> list[Use]:
        return [use for path in paths
                for use in private_uses(path.read_text(), str(path.relative_to(ROOT)), own, known, methods)]

    in_adapters = uses(list(ADAPTERS), set())
    known = {use.name for use in in_adapters if is_private(use.name)}
    return in_adapters, uses(others, known), own, known, methods, broken


def test_the_scan_finds_every_private_name_inside_the_adapters(scan):
    in_adapters = {use.name for use in scan[0]}
    assert ADAPTED <= in_adapters, f"the scan missed {sorted(ADAPTED - in_adapters)} in the adapters"


def test_no_private_optuna_or_keras_name_outside_the_adapters(scan):
    outside, broken = scan[1], scan[5]
    assert broken == [], "cannot scan (not valid Python):\n" + "\n".join(broken)
    assert outside == [], ("private Optuna/Keras names used outside mtl_suite/tuning/optuna_private.py and "
                           "mtl_suite/training/keras_private.py (go through an adapter function):\n"
                           + "\n".join(map(str, outside)))


def test_the_scan_flags_each_kind_of_use(scan):
    _, _, own, known, methods, _ = scan
    source = '''
import optuna.storages._heartbeat
from optuna.pruners import _filter_study
from keras.src.layers import Dropout
HEARTBEATS = "optuna.storages._heartbeat"

class Pruner(optuna.pruners.HyperbandPruner):
    def _get_bracket_id(self, study, trial):
        return len(self._pruners) + study._directions[0]

def seeds(model, trial):
    return model._flatten_layers(), getattr(model, "_seed_generators", []), trial._trial_id
'''
    found = {use.name for use in private_uses(source, "example.py", own, known, methods)}
    assert found == {"optuna.storages._heartbeat", "optuna.pruners._filter_study", "keras.src.layers",
                     "_get_bracket_id", "_pruners", "_directions", "_flatten_layers", "_seed_generators", "_trial_id"}


def test_the_scan_leaves_mtl_suites_own_private_names_alone(scan):
    _, _, own, known, methods, _ = scan
    source = '''
class Logger:
    def __init__(self):
        self._client = None

    def _log(self, other):
        return self._client, other._client, self.__class__
'''
    assert private_uses(source, "example.py", own | {"_client", "_log"}, known, methods) == []
