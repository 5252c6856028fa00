"""Every `burla ...` command that a message, docstring or the README advises exists, with the
options it names; and no text mentions a command that is planned but not built."""

from __future__ import annotations

import argparse
import ast
import re
from collections.abc import Iterator
from pathlib import Path

import typer

from burla import daemon_cli
from burla.cli import app

ROOT = Path(__file__).resolve().parents[2]
# Commands the design plans that do not exist yet: no text may send a user to them.
NOT_BUILT = ("login", "install", "uninstall", "users", "api-keys")
_SPAN = re.compile(r"`(burla [^`]+)`")


def texts() -> Iterator[tuple[str, str]]:
    """(where, text) for every string in burla/**/*.py (an f-string with {} for its fields)
    and every line of the README."""
    for path in sorted((ROOT / "burla").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.JoinedStr):
                text = "".join(v.value if isinstance(v, ast.Constant) else "{}"
                               for v in node.values)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
            else:
                continue
            yield f"{path.relative_to(ROOT)}:{node.lineno}", text
    for number, line in enumerate((ROOT / "README.md").read_text().splitlines(), 1):
        yield f"README.md:{number}", line


def commands() -> list[tuple[str, str]]:
    """(where, command line) for every backquoted `burla ...`, and every README line that
    starts with one (the command table)."""
    found = [(where, span) for where, text in texts() for span in _SPAN.findall(text)]
    found += [(where, line.split("  ")[0]) for where, line in texts()
              if where.startswith("README") and line.startswith("burla ")]
    return found


def daemon_problem(words: list[str]) -> str | None:
    """What is wrong with a daemon's command line (argparse, burla/daemon_cli.py)."""
    commands = next(a for a in daemon_cli.parser()._actions
                    if isinstance(a, argparse._SubParsersAction))
    options = {o for a in commands.choices[words[0]]._actions for o in a.option_strings}
    for word in words[1:]:
        if word.startswith("-") and word.split("=")[0] not in options:
            return f"{words[0]} has no option {word}"
    return None


def problem(line: str) -> str | None:
    """What is wrong with the command line `line`, or None if it names a real command."""
    command = typer.main.get_command(app)  # a group's subcommands are in .commands
    words = line.split()[1:]
    if words and words[0] in daemon_cli.SUMMARIES:
        return daemon_problem(words)
    for position, word in enumerate(words):
        if word == "--help":
            continue  # every command and group has it
        if word.startswith("-"):
            names = {n for p in command.params for n in getattr(p, "opts", [])}
            if word.split("=")[0] not in names:
                return f"{command.name} has no option {word}"
            continue
        if not hasattr(command, "commands") or word in ("|", "..."):
            continue  # an argument, a placeholder, or one of several alternatives
        if word not in command.commands:  # type: ignore[attr-defined]
            return f"no command {word!r} in {' '.join(['burla', *words[:position]])!r}"
        alternatives = words[position + 1:position + 2] == ["|"]
        if not alternatives:
            command = command.commands[word]  # type: ignore[attr-defined]
    return None


def test_the_scan_finds_the_commands_it_should():
    lines = {line for _, line in commands()}
    assert {"burla local up", "burla jobs list", "burla status"} <= lines
    assert problem("burla local down --all") is None
    assert problem("burla local up | down | status") is None
    assert problem("burla login") is not None
    assert problem("burla local down --everything") is not None
    assert problem("burla agent --coordinator ENDPOINT --token-file FILE") is None
    assert problem("burla agent --coordinater ENDPOINT") is not None


def test_every_advised_command_exists():
    wrong = [f"{where}: `{line}`: {why}" for where, line in commands()
             if (why := problem(line)) is not None]
    assert not wrong, "\n".join(wrong)


def test_no_text_mentions_a_command_not_built_yet():
    planned = re.compile(rf"\bburla ({'|'.join(NOT_BUILT)})\b")
    mentions = [f"{where}: {text.strip()[:100]}" for where, text in texts()
                if planned.search(text)]
    assert not mentions, "\n".join(mentions)
