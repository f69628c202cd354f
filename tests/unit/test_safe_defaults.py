"""Safe defaults that hold by construction: `serve` binds 127.0.0.1 and turns request file paths off unless told
otherwise, and a scan of mtl_suite's syntax trees finds no unsafe YAML loading, no pickle, no pickled NumPy
files, no Keras model loaded without safe_mode=True, and no eval/exec/shell=True.

(Manifest paths outside their folder and unusual file names are tested through the CLI in
tests/integration/test_bad_inputs.py.)"""

from __future__ import annotations

import ast
import os
from pathlib import Path

from mtl_suite.cli import app

PACKAGE = Path(__file__).resolve().parents[2] / "mtl_suite"

# --- serve ---------------------------------------------------------------------------------------------------------


def _served(runner, monkeypatch, tmp_path, *options: str) -> tuple[list[str], dict[str, str]]:
    """The command `mtl-suite serve` would exec, captured instead of run."""
    calls = []
    monkeypatch.setattr(os, "execve", lambda path, args, env: calls.append((list(args), dict(env))))
    model = tmp_path / "model"  # a local folder: no registry lookup before the exec
    model.mkdir()
    result = runner.invoke(app, ["serve", "--model", str(model), "--tracking-uri",
                                 f"sqlite:///{tmp_path / 'mlflow.db'}", *options])
    assert result.exit_code == 0, result.output
    assert len(calls) == 1
    return calls[0]


def _option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_serve_binds_localhost_and_refuses_paths_by_default(runner, monkeypatch, tmp_path):
    command, env = _served(runner, monkeypatch, tmp_path)
    assert command[1:3] == ["models", "serve"]
    assert _option(command, "-h") == "127.0.0.1"
    assert env["MTL_SUITE_ALLOW_PATHS"] == "0"  # requests cannot name files on the server
    assert "--allow-paths" in runner.invoke(app, ["serve", "--help"]).output


def test_serve_binds_elsewhere_only_when_told(runner, monkeypatch, tmp_path):
    command, env = _served(runner, monkeypatch, tmp_path, "--host", "0.0.0.0", "--allow-paths")
    assert _option(command, "-h") == "0.0.0.0"
    assert env["MTL_SUITE_ALLOW_PATHS"] == "1"


# --- the source scan -----------------------------------------------------------------------------------------------

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "shelve", "marshal", "joblib"}
UNSAFE_YAML = {"unsafe_load", "unsafe_load_all", "full_load", "full_load_all", "Loader", "UnsafeLoader",
               "FullLoader"}
NP_LOADS = {"np.load", "numpy.load"}


def dotted(node: ast.AST) -> str:
    """'mlflow.keras.load_model' for the expression mlflow.keras.load_model; '' for anything not a plain name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_const(node: ast.expr | None, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def _passes_safe_mode(call: ast.Call) -> bool:
    """safe_mode=True, or (mlflow.keras) load_model_kwargs={"safe_mode": True, ...} written out."""
    if _is_const(_keyword(call, "safe_mode"), True):
        return True
    kwargs = _keyword(call, "load_model_kwargs")
    return isinstance(kwargs, ast.Dict) and any(
        isinstance(k, ast.Constant) and k.value == "safe_mode" and _is_const(v, True)
        for k, v in zip(kwargs.keys, kwargs.values))


def scan(source: str, where: str = "<source>") -> tuple[list[str], dict[str, int]]:
    """(violations as 'where:line: why', counts of the safe calls seen)."""
    tree = ast.parse(source)
    problems: list[str] = []
    seen = {"yaml.safe_load": 0, "np.load": 0, "keras load_model": 0}

    def flag(node: ast.AST, why: str) -> None:
        problems.append(f"{where}:{node.lineno}: {why}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PICKLE_MODULES:
                    flag(node, f"imports {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            module = (node.module or "").split(".")[0]
            if module in PICKLE_MODULES:
                flag(node, f"imports from {node.module}")
            if module == "yaml" and any(a.name in UNSAFE_YAML | {"load", "load_all"} for a in node.names):
                flag(node, "imports an unsafe YAML loader by name")
        elif isinstance(node, ast.Attribute) and dotted(node.value) == "yaml" and node.attr in UNSAFE_YAML:
            flag(node, f"uses yaml.{node.attr}")
        elif isinstance(node, ast.Call):
            name = dotted(node.func)
            last = name.rsplit(".", 1)[-1]
            if name in ("yaml.load", "yaml.load_all"):
                loader = dotted(_keyword(node, "Loader") or ast.Constant(None))
                if not loader.endswith("SafeLoader"):
                    flag(node, f"{name} without Loader=yaml.SafeLoader")
            elif name == "yaml.safe_load":
                seen["yaml.safe_load"] += 1
            if name in NP_LOADS:
                seen["np.load"] += 1
                if not _is_const(_keyword(node, "allow_pickle"), False):
                    flag(node, f"{name} without allow_pickle=False")
            if _is_const(_keyword(node, "allow_pickle"), True):
                flag(node, "allow_pickle=True")
            if last in ("read_pickle", "to_pickle") or name in ("torch.load",):
                flag(node, f"{name or last}: pickle")
            if last == "load_model" and "keras" in name:
                seen["keras load_model"] += 1
                if not _passes_safe_mode(node):
                    flag(node, f"{name} without safe_mode=True written out")
            if name in ("eval", "exec", "os.system", "os.popen"):
                flag(node, f"calls {name}")
            if _is_const(_keyword(node, "shell"), True):
                flag(node, "shell=True")
    return problems, seen


UNSAFE_FORMS = [
    "import pickle",
    "import cloudpickle as cp",
    "from joblib import load",
    "from yaml import load",
    "yaml.load(text)",
    "yaml.load(text, Loader=yaml.Loader)",
    "yaml.unsafe_load(text)",
    "yaml.full_load(text)",
    "np.load(path)",
    "np.load(path, allow_pickle=True)",
    "np.save(path, x, allow_pickle=True)",
    "pd.read_pickle(path)",
    "keras.models.load_model(path)",
    "keras.saving.load_model(path, safe_mode=False)",
    "mlflow.keras.load_model(uri)",
    "mlflow.keras.load_model(uri, load_model_kwargs={'safe_mode': False})",
    "tf.keras.models.load_model(path, compile=False)",
    "eval(text)",
    "exec(code)",
    "os.system(command)",
    "subprocess.run(command, shell=True)",
]


def test_scanner_catches_each_unsafe_form():
    """The scan must not pass by seeing nothing: each form alone is a finding."""
    missed = [form for form in UNSAFE_FORMS if not scan(form)[0]]
    assert missed == []


def test_scanner_accepts_the_safe_forms():
    good = """
yaml.safe_load(text)
yaml.load(text, Loader=yaml.SafeLoader)
np.load(path, allow_pickle=False)
keras.saving.load_model(path, safe_mode=True)
mlflow.keras.load_model(uri, load_model_kwargs={"safe_mode": True})
"""
    assert scan(good)[0] == []


def test_mtl_suite_loads_nothing_unsafely():
    """Keras 3 defaults to safe_mode=True (no Lambda bytecode from a model file); we require it spelled out so no
    wrapper or future default can drop it. mlflow.pyfunc.load_model (predict, serve) is the one loader of a whole
    MLflow model: the registered pyfunc is models-from-code, so a model built here holds no pickle."""
    problems, seen = [], {}
    for path in sorted(PACKAGE.rglob("*.py")):
        found, counts = scan(path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE.parent)))
        problems += found
        for key, count in counts.items():
            seen[key] = seen.get(key, 0) + count
    assert problems == [], "\n".join(problems)
    # The scan saw the loaders it vouches for (config and spaces YAML, cached arrays, the served Keras model).
    assert seen["yaml.safe_load"] >= 2 and seen["np.load"] >= 2 and seen["keras load_model"] >= 4, seen
