"""The READMEs cannot drift from the code: every command they show (in ```bash blocks and in
inline code) is parsed by the real parser of what it runs, so a renamed or removed flag, a
missing management command, module, script or make target fails here. The API's curl block
is run for real against a live server in tests/e2e/test_readme_api.py; the two set-up
commands (make up, make test) are what CI and the fresh-clone checks run."""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import CommandError, get_commands, load_command_class

ROOT = Path(__file__).resolve().parents[1]
READMES = [ROOT / "README.md", ROOT / "ml" / "README.md"]
PYTHON = r"(?:\.venv/bin/)?python3?"
# Tools from elsewhere, shown for the reader's convenience; their flags are not ours.
FOREIGN = ("-m pynetdicom", "-c ")  # python -c: a one-liner, not a command of ours


def bash_lines(text: str) -> list[str]:
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        block = re.sub(r"\\\n\s*", " ", block)  # continuation lines
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()  # a trailing comment
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def inline_lines(text: str) -> list[str]:
    return re.findall(rf"`((?:{PYTHON}|make) [^`]+)`", text)


def commands() -> list[tuple[str, str]]:
    found = []
    for readme in READMES:
        text = readme.read_text()
        for line in bash_lines(text) + inline_lines(text):
            for part in re.split(r"\s*(?:&&|;|\|)\s*(?![^\[]*\])", line):
                part = re.sub(r"^(?:time |[A-Z_]+=\S+ )+", "", part.strip())
                if re.match(rf"^(?:{PYTHON}|make)\s", part):
                    found.append((readme.relative_to(ROOT).as_posix(), part))
    return found


def normalised(line: str) -> str:
    """A usage line as one concrete call: optional groups kept ([--name NAME] -> --name
    NAME), the first of alternatives (a|b -> a), placeholders (N, DIR, NAME) as values;
    groups that are prose ([ml.train flags]) dropped."""
    line = re.sub(r"\[(?!-)[^\[\]]*\]", "", line)  # [ml.train flags]
    line = line.replace("[", "").replace("]", "")
    return re.sub(r"(?<=\s)([\w-]+)(?:\|[\w-]+)+(?=\s|$)", r"\1", line)  # a|b|c -> a


PLACEHOLDER = re.compile(r"(?<=\s)[A-Z][A-Z_]*(?:\.csv)?(?=\s|$)")  # PATH, N, NAME, H


def check(argv: list[str], *, strict: bool = True) -> None:
    """Parse argv (what follows `python`) with the parser of what it runs, pytest.fail on
    an error. Not strict (a line with shell variables or "..."): only that every --flag it
    names exists."""
    if argv[0] == "manage.py":
        name, rest = argv[1], argv[2:]
        assert name in get_commands(), f"no management command {name!r}"
        parser = load_command_class(get_commands()[name], name).create_parser("manage.py", name)
        if not strict:
            return flags_exist(rest, parser.format_help(), f"manage.py {name}")
        try:
            parser.parse_args(rest)
        except CommandError as exc:
            pytest.fail(f"manage.py {name}: {exc}")
        return None
    if argv[0] == "-m":
        module, rest = argv[1], argv[2:]
        imported = importlib.import_module(module)
        if not rest:  # the module named in prose
            return None
        if hasattr(imported, "get_args_parser"):
            parser = imported.get_args_parser()
            if not strict:
                return flags_exist(rest, parser.format_help(), module)
            try:
                parser.parse_args(rest)
            except SystemExit as exc:
                if exc.code != 0:  # --help exits 0
                    pytest.fail(f"python -m {module}: its parser refuses {rest}")
            return None
        target = ["-m", module]
    else:
        script = ROOT / argv[0]
        assert script.is_file(), f"no such script {argv[0]}"
        target, rest = [str(script)], argv[1:]
    shown = subprocess.run(
        [sys.executable, *target, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert shown.returncode == 0, shown.stderr
    return flags_exist(rest, shown.stdout, " ".join(target))


def flags_exist(args: list[str], help_text: str, what: str) -> None:
    for flag in (a.split("=")[0] for a in args if a.startswith("--")):
        assert re.search(rf"{re.escape(flag)}\b", help_text), f"{what} has no {flag}"


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), flags=re.M))


COMMANDS = commands()


def test_the_readmes_show_commands():
    assert len(COMMANDS) > 40  # the extraction works: both READMEs are full of them
    assert ("README.md", "make up") in COMMANDS and ("README.md", "make test") in COMMANDS


@pytest.mark.parametrize(("readme", "line"), COMMANDS, ids=[f"{r}: {c[:60]}" for r, c in COMMANDS])
def test_every_readme_command_parses(readme, line):
    if any(f" {foreign}" in line for foreign in FOREIGN):
        return
    line = normalised(line)
    argv = shlex.split(line)
    if argv[0] == "make":
        assert argv[1] in make_targets(), f"Makefile has no target {argv[1]!r}"
        return
    # A synopsis (PATH, NAME...), shell variables or "...": every flag it names must exist.
    strict = "$" not in line and "..." not in line and not PLACEHOLDER.search(line)
    check(argv[1:], strict=strict)


def test_a_drifted_flag_is_caught():
    with pytest.raises(pytest.fail.Exception):
        check(["manage.py", "register_model", "PATH", "--no-such-flag"])
    with pytest.raises(pytest.fail.Exception):
        check(["-m", "ml.shift", "--data", "D", "--out", "O", "--no-such-flag", "1"])
    with pytest.raises(AssertionError):
        check(["manage.py", "no_such_command"])
