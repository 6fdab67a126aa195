"""Every command line in README.md's code blocks exists with that spelling: its (sub)command answers --help and
each --option it uses is an option of that command."""

import re
import shlex
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from vaest.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"
PROGRAMS = ("vaest", ".venv/bin/vaest", "$V")


def readme_commands() -> list[str]:
    """Command lines in fenced code blocks that start with vaest, .venv/bin/vaest or $V (comments stripped)."""
    if not README.exists():
        return []
    out, inside = [], False
    for line in README.read_text().splitlines():
        if line.lstrip().startswith("```"):
            inside = not inside
            continue
        s = line.strip().removeprefix("$ ")
        if inside and s.split(" ", 1)[0] in PROGRAMS:
            out.append(re.sub(r"\s+#.*$", "", s))
    return out


def _resolve(tokens: list[str]):
    cmd = typer.main.get_command(app)
    path = []
    for t in tokens:
        if t in getattr(cmd, "commands", {}):
            cmd = cmd.commands[t]
            path.append(t)
        else:
            break
    return cmd, path


@pytest.mark.parametrize("line", readme_commands() or [pytest.param("", marks=pytest.mark.skip(reason="no README"))])
def test_readme_command_exists(line):
    tokens = shlex.split(line, comments=True)[1:]
    cmd, path = _resolve(tokens)
    r = CliRunner().invoke(app, [*path, "--help"])
    assert r.exit_code == 0, f"{line}: {r.output}"
    known = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
    used = [t.split("=", 1)[0] for t in tokens if t.startswith("--")]
    unknown = [o for o in used if o not in known]
    assert not unknown, f"{line}: `vaest {' '.join(path)}` has no option(s) {', '.join(unknown)}"
