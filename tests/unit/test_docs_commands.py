"""Every command line of the user's documentation (README.md and docs/*.md) against the CLI it names: each
`mtl-suite ...`, `python -m mtl_suite ...` and `mlflow run . -e NAME -P k=v ...` (through MLproject's entry point
command, as MLflow builds it) in a fenced shell block is parsed by the click command itself, options, choices and
arguments checked, nothing run. A renamed or removed option, a wrong choice or a misplaced argument in the docs
fails here with the file, line and the offending command; placeholders in angle brackets (`<your smears>`) stand
for any value. The README also stays a short user's guide (at most 210 lines), no page names an issue number or a
path of one machine, and every relative link leads to a file and heading that exist."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
import typer.main
import yaml

from mtl_suite.cli import app

try:  # typer 0.29 vendors click as typer._click (see mtl_suite/cli/common.py)
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover - a typer that uses click itself
    from click.exceptions import UsageError

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = [README, *sorted((REPO / "docs").glob("*.md"))]
MLPROJECT = yaml.safe_load((REPO / "MLproject").read_text(encoding="utf-8"))["entry_points"]
ROOT = typer.main.get_command(app)

SHELL_BLOCKS = {"", "bash", "sh", "shell", "console"}  # the info string of a fenced block whose lines are commands
ANGLE_PLACEHOLDER = re.compile(r"<[A-Za-z][^<>\n]*>")  # <path to aria-all>, <run id>: a value to fill in
ENTRY_PLACEHOLDER = re.compile(r"\{(\w+)\}")  # MLproject: {data}
SEPARATORS = {"&&", "||", ";", "&", "|", ";;"}
WRAPPERS = {"time", "nohup", "exec", "sudo"}
# `mlflow run` options that take a value (the rest of its options are flags)
MLFLOW_RUN_VALUES = {"-e", "--entry-point", "-P", "--param-list", "-A", "--docker-args", "-v", "--version",
                     "--experiment-name", "--experiment-id", "-b", "--backend", "-c", "--backend-config",
                     "--env-manager", "--storage-dir", "--run-id", "--run-name", "--docker-auth"}


@dataclass(frozen=True)
class Line:
    where: str  # README.md:12
    text: str  # the command line as written (continuations joined)


def shell_lines(path: Path) -> list[Line]:
    """The lines of the fenced shell blocks of a Markdown file, continuation lines joined, `$ ` prompts dropped."""
    lines, block, pending, start = [], None, "", 0
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("```"):
            block = stripped[3:].strip().lower() if block is None else None
            pending = ""
            continue
        if block not in SHELL_BLOCKS:
            continue
        if block == "console" and not stripped.startswith("$ ") and not pending:
            continue  # a console block's output
        if not pending:
            start = number
            stripped = stripped[2:] if stripped.startswith("$ ") else stripped
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(Line(f"{path.relative_to(REPO)}:{start}", pending + stripped))
        pending = ""
    return lines


def commands(line: str, dummy: str = "x") -> list[list[str]]:
    """The suite's commands on one shell line: each `mtl-suite`, `python -m mtl_suite` or `mlflow run` segment
    (between `&&`, `;`, `|`, `&`), as words, after environment assignments and wrappers such as `time`; each
    placeholder in angle brackets is `dummy`."""
    text = ANGLE_PLACEHOLDER.sub(dummy, line)
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    words = list(lexer)
    found, segment = [], []
    for word in [*words, ";"]:
        if word not in SEPARATORS:
            segment.append(word)
            continue
        while segment and (re.fullmatch(r"\w+=.*", segment[0]) or segment[0] in WRAPPERS):
            segment = segment[1:]
        if segment[:1] == ["mtl-suite"] or segment[:3] in (["python", "-m", "mtl_suite"],
                                                           ["python3", "-m", "mtl_suite"]):
            found.append(segment)
        elif segment[:2] == ["mlflow", "run"]:
            found.append(segment)
        segment = []
    return found


def _optional_parts_included(words: list[str]) -> list[str]:
    """`[--masks PATH]`, `[PATH]`: usage notation for an optional part; checked as if given."""
    out = []
    for word in words:
        if word.startswith("[") and len(word) > 1:
            word = word[1:]
        if word.endswith("]") and "[" not in word and len(word) > 1:
            word = word[:-1]
        out.append(word)
    return out


def mtl_suite_args(words: list[str]) -> list[str] | None:
    """The arguments after `mtl-suite` that a documented command runs; None for another project's `mlflow run`."""
    if words[0] == "mtl-suite":
        return _optional_parts_included(words[1:])
    if words[0] != "mlflow":
        return _optional_parts_included(words[3:])
    return mlflow_run_args(_optional_parts_included(words[2:]))


def mlflow_run_args(words: list[str]) -> list[str] | None:
    """What `mlflow run . -e NAME -P k=v ...` runs: the entry point's command with the parameters put in as MLflow
    does (values shell-quoted, defaults for the rest, undeclared ones appended as `--key value`)."""
    uri, entry, params, rest = None, "main", {}, list(words)
    while rest:
        word = rest.pop(0)
        if word in MLFLOW_RUN_VALUES or any(word.startswith(f"{o}=") for o in MLFLOW_RUN_VALUES if o[:2] == "--"):
            name, _, value = word.partition("=")
            value = value or (rest.pop(0) if rest else "")
            if name in ("-e", "--entry-point"):
                entry = value
            elif name in ("-P", "--param-list"):
                key, sep, param = value.partition("=")
                assert sep, f"-P {value}: expected key=value"
                params[key] = param
        elif word.startswith("-"):
            continue  # a flag of mlflow run
        elif uri is None:
            uri = word
    if uri not in (".", "./"):
        return None  # another project
    assert entry in MLPROJECT, f"no entry point {entry!r} in MLproject (it has {', '.join(sorted(MLPROJECT))})"
    declared = MLPROJECT[entry].get("parameters", {})
    values = {key: params.get(key, spec.get("default", "")) for key, spec in declared.items()}
    line = ENTRY_PLACEHOLDER.sub(lambda m: shlex.quote(str(values[m.group(1)])), MLPROJECT[entry]["command"])
    line += "".join(f" --{shlex.quote(k)} {shlex.quote(v)}" for k, v in params.items() if k not in declared)
    words = shlex.split(line)
    assert words[:3] == ["python", "-m", "mtl_suite"], MLPROJECT[entry]["command"]
    return words[3:]


def parse(args: list[str]) -> None:
    """Parse `mtl-suite ARGS` with the click commands, running nothing (a --help or --version ends the parse)."""
    command, name, rest = ROOT, "mtl-suite", list(args)
    try:
        while hasattr(command, "commands"):
            group_options = []
            while rest and rest[0].startswith("-"):
                group_options.append(rest.pop(0))
            if group_options:
                command.make_context(name, group_options, resilient_parsing=False)  # e.g. --verbose, --version
            if not rest:
                raise UsageError(f"`{name}` is a group: name one of its commands ({', '.join(command.commands)})")
            if rest[0] not in command.commands:
                raise UsageError(f"no command {rest[0]!r} in `{name}` (it has {', '.join(command.commands)})")
            command, name, rest = command.commands[rest[0]], rest[0], rest[1:]
        _parse_command(command, name, rest)
    except typer.Exit:
        return  # --help, --version: parsed


def _parse_command(command, name: str, args: list[str]) -> None:
    for _ in range(len(args) + 1):
        try:
            command.make_context(name, list(args), resilient_parsing=False)
            return
        except UsageError as error:
            # a path the command requires to exist is only an example here: put an existing one in its place
            missing = re.search(r"'(.+)' does not exist", str(error))
            if not missing or missing.group(1) not in args:
                raise
            args = [str(REPO) if word == missing.group(1) else word for word in args]


# a placeholder is any value: a word, else a number (for an option that takes one, such as `--folds <k>`)
DUMMIES = ("x", "1")


def documented_commands() -> list[tuple[Line, list[list[str]]]]:
    """Each documented command as words, once per dummy value of its placeholders."""
    found = []
    for path in DOCS:
        for line in shell_lines(path):
            try:
                variants = [commands(line.text, dummy) for dummy in DUMMIES]
            except ValueError as error:  # unbalanced quotes
                if "mtl-suite" in line.text or "mtl_suite" in line.text or "mlflow run" in line.text:
                    found.append((line, [["<unreadable>", str(error)]]))
                continue
            found.extend((line, list(words)) for words in zip(*variants))
    return found


DOCUMENTED = documented_commands()


def test_the_docs_have_commands_to_check():
    """The extraction finds what a user copies: the quick start and the one-command path at least."""
    readme = [" ".join(words[0]) for line, words in DOCUMENTED if line.where.startswith("README.md")]
    assert "mlflow run . -e stage3 --env-manager local" in readme
    assert any(words.startswith("mtl-suite train experiments/") for words in readme), readme
    assert len(DOCUMENTED) >= 20, [line.where for line, _ in DOCUMENTED]


@pytest.mark.parametrize(("line", "variants"), DOCUMENTED, ids=[f"{line.where}" for line, _ in DOCUMENTED])
def test_every_documented_command_parses(line, variants, monkeypatch):
    assert variants[0][0] != "<unreadable>", f"{line.where}: cannot read `{line.text}`: {variants[0][1]}"
    monkeypatch.chdir(REPO)  # relative paths in the docs are from the project root
    for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MTL_SUITE_VERBOSE"):
        monkeypatch.delenv(variable, raising=False)
    errors = []
    for words in variants:
        try:
            args = mtl_suite_args(words)
            if args is not None:
                parse(args)
            return
        except (UsageError, AssertionError) as error:
            errors.append(error.format_message() if isinstance(error, UsageError) else str(error))
    pytest.fail(f"{line.where}: `{line.text}` does not parse: {errors[0]}", pytrace=False)


def test_a_renamed_option_fails_the_check():
    """The check itself: the same words with an option the CLI does not have are refused."""
    parse(["train", "experiments/fast-cpu.yaml", "--data", "x", "--masks", "x"])
    with pytest.raises(UsageError, match="--mask"):
        parse(["train", "experiments/fast-cpu.yaml", "--data", "x", "--mask", "x"])
    with pytest.raises(UsageError):
        parse(["segment", "evaluate", "--run-id", "x"])
    with pytest.raises((UsageError, AssertionError)):
        parse(mlflow_run_args([".", "-e", "train", "-P", "recipe=experiments/fast-cpu.yaml", "-P", "datta=x"]))


def test_the_readme_is_a_short_guide():
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= 210, f"README.md has {lines} lines: it is the user's guide, move detail into docs/"


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(REPO)) for p in DOCS])
def test_no_paths_of_one_machine_and_no_issue_numbers(path):
    text = path.read_text(encoding="utf-8")
    for local in ("/work/", "../shared"):
        assert local not in text, f"{path.relative_to(REPO)} names {local!r}: use a placeholder such as <path to data>"
    issue = re.search(r"\bissues? \d+", text, flags=re.IGNORECASE)
    assert issue is None, f"{path.relative_to(REPO)} names an issue ({issue.group(0)!r}): say what, not which ticket"


def test_the_readme_test_command_is_what_ci_runs():
    """.ci/run runs the README's quick-start test command; both must stay `python -m pytest`."""
    assert "python -m pytest\n" in README.read_text(encoding="utf-8")
    assert re.search(r"^python -m pytest\b", (REPO / ".ci" / "run").read_text(encoding="utf-8"), flags=re.MULTILINE)



LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but hyphens and underscores dropped, spaces as hyphens."""
    headings = re.findall(r"^#{1,6} +(.+?) *$", _without_code_blocks(path.read_text(encoding="utf-8")), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def _without_code_blocks(text: str) -> str:
    return re.sub(r"^ *```.*?^ *```", "", text, flags=re.MULTILINE | re.DOTALL)


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(REPO)) for p in DOCS])
def test_every_link_leads_somewhere(path):
    """The README's material now lives in docs/: a moved section or a renamed file must not leave a dead link."""
    for target in LINK.findall(_without_code_blocks(path.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):
            continue  # http://, https://, mailto:
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        assert linked.exists(), f"{path.relative_to(REPO)}: link to {target}: no such file"
        if anchor and linked.suffix == ".md":
            assert anchor in _anchors(linked), f"{path.relative_to(REPO)}: link to {target}: no such heading"
