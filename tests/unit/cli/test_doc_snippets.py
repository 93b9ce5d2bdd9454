"""The README's and docs' fenced snippets work when pasted.

Python blocks (and Python heredocs in shell blocks) byte-compile; shell blocks pass
``bash -n``; every ``saga-coordinator`` subcommand they name answers ``--help``; every
``python -m`` module exists; every ``scripts/…`` exists and is executable; every relative path
or glob they name exists in the repository; Python runs as ``.venv/bin/python`` (the project's
interpreter, which has the dependencies); and no ``<placeholder>`` is left where the shell
would read a redirection.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCUMENTS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "participants").rglob("README.md")),
]
FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.MULTILINE | re.DOTALL)
HEREDOC = re.compile(r"<<-?\s*'?(\w+)'?")
CLI = re.compile(r"(?:^|[\s(|;&])(?:\.venv/bin/)?saga-coordinator((?:\s+[a-z][a-z-]*){1,2})")
MODULE = re.compile(r"(?:^|[\s(|;&])(\S*python3?)\s+-m\s+([\w.]+)")
BARE_PYTHON = re.compile(r"(?:^|[|;&(]|\$\()\s*(?:\w+=\S+\s+)*(python3?)\s")
SCRIPT = re.compile(r"(?:^|[\s(|;&])(scripts/[\w.-]+)")
REPO_PATH = re.compile(r"^@?([\w-][\w.-]*/[\w./*-]*)$")
QUOTED = re.compile(r"'[^']*'|\"(?:[^\"\\\\]|\\\\.)*\"")
PLACEHOLDER = re.compile(r"<[a-z][\w-]*>")


@dataclass(frozen=True)
class Snippet:
    document: Path
    line: int
    language: str
    text: str

    def __str__(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"


def snippets(*languages: str) -> list[Snippet]:
    found = []
    for document in DOCUMENTS:
        text = document.read_text()
        for match in FENCE.finditer(text):
            if match.group(2) in languages:
                line = text.count("\n", 0, match.start()) + 2
                body = "\n".join(row[len(match.group(1)) :] for row in match.group(3).splitlines())
                found.append(Snippet(document, line, match.group(2), body))
    return found


def split_heredocs(text: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The block's command lines (continuations joined) and its heredocs (command, body)."""
    commands: list[str] = []
    heredocs: list[tuple[str, str]] = []
    lines = iter(text.splitlines())
    for raw in lines:
        line = raw
        while line.endswith("\\"):
            line = line[:-1] + " " + next(lines, "").strip()
        commands.append(line)
        if (match := HEREDOC.search(line)) is not None:
            body = []
            for inner in lines:
                if inner.strip() == match.group(1):
                    break
                body.append(inner)
            heredocs.append((line, "\n".join(body)))
    return commands, heredocs


def code(line: str) -> str:
    """The line without its comment (a ``#`` outside quotes) and without quoted text."""
    unquoted = QUOTED.sub("''", line)
    return re.split(r"(?:^|\s)#", unquoted, maxsplit=1)[0]


SHELL = snippets("sh", "bash", "shell")
PYTHON = snippets("python")


def test_the_documents_have_snippets_to_check() -> None:
    assert len(SHELL) >= 10 and len(PYTHON) >= 2


@pytest.mark.parametrize("snippet", PYTHON, ids=str)
def test_python_snippets_compile(snippet: Snippet) -> None:
    compile(snippet.text, str(snippet), "exec")


@pytest.mark.parametrize("snippet", SHELL, ids=str)
def test_shell_snippets_parse_and_name_what_exists(snippet: Snippet) -> None:
    bash = shutil.which("bash")
    assert bash is not None
    parsed = subprocess.run([bash, "-n"], input=snippet.text, capture_output=True, text=True)
    assert parsed.returncode == 0, f"{snippet}: {parsed.stderr}"
    commands, heredocs = split_heredocs(snippet.text)
    for command, body in heredocs:
        if "python" in command:
            compile(body, f"{snippet} (heredoc)", "exec")
    for line in map(code, commands):
        where = f"{snippet}: {line.strip()}"
        assert not PLACEHOLDER.search(line), f"{where}: a <placeholder> the shell reads as <"
        bare = BARE_PYTHON.search(line)
        assert bare is None, f"{where}: run Python as .venv/bin/python"
        for script in SCRIPT.findall(line):
            path = ROOT / script
            assert path.is_file() and path.stat().st_mode & 0o111, f"{where}: {script}"
        for _, module in MODULE.findall(line):
            assert importlib.util.find_spec(module) is not None, f"{where}: no module {module}"
        for word in line.replace("=", " ").split():
            path = REPO_PATH.match(word)
            if path is not None and not path.group(1).startswith(".venv/"):
                assert list(ROOT.glob(path.group(1).rstrip("/"))), f"{where}: no {path.group(1)}"


def cli_commands() -> list[tuple[str, ...]]:
    found: set[tuple[str, ...]] = set()
    for snippet in SHELL:
        for line in split_heredocs(snippet.text)[0]:
            for match in CLI.finditer(code(line)):
                words = match.group(1).split()
                found.add(tuple(words[:2]) if words[0] == "sagas" else (words[0],))
    return sorted(found)


def test_the_readme_starts_with_demo_test_and_dev() -> None:
    first = snippets("sh")[0]
    assert first.document.name == "README.md" and first.line < 6
    commands = [line.split("#")[0].strip() for line in first.text.splitlines()]
    assert commands == [
        "scripts/demo",
        "scripts/test",
        ".venv/bin/saga-coordinator dev --examples",
    ]


@pytest.mark.parametrize("words", cli_commands(), ids=" ".join)
def test_every_saga_coordinator_command_in_the_docs_exists(words: tuple[str, ...]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "coordinator", *words, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"saga-coordinator {' '.join(words)}: {done.stderr}"
