"""``batchsub completion bash|zsh``: scripts made from the parser, driven in the real shells."""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from batchsub.cli import main
from batchsub.commands._parser import build_parser
from batchsub.commands.completion import Node, bash_script, walk, zsh_script

PARSER = build_parser([])
NODES = walk(PARSER)
_END = "\x1e"


def bash_complete(cases: list[list[str]], cwd: Path) -> list[set[str]]:
    """What bash offers for each command line (its last word the one being completed)."""
    script = cwd / "batchsub.bash"
    script.write_text(bash_script(PARSER))
    lines = [f"source {shlex.quote(str(script))}"]
    lines.append(
        'complete_line() { COMP_WORDS=("$@"); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ));'
        " COMPREPLY=(); _batchsub; printf '%s\\n' \"${COMPREPLY[@]}\"; printf '\\036\\n'; }"
    )
    lines += ["complete_line " + " ".join(shlex.quote(word) for word in case) for case in cases]
    result = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", "\n".join(lines)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        check=True,
    )
    answers = result.stdout.split(_END + "\n")
    assert answers[-1] == "" and len(answers) == len(cases) + 1, result.stderr
    return [{word for word in answer.splitlines() if word} for answer in answers[:-1]]


def test_the_command_prints_each_script(capsys: pytest.CaptureFixture[str]) -> None:
    for shell, script in (("bash", bash_script), ("zsh", zsh_script)):
        assert main(["completion", shell]) == 0
        assert capsys.readouterr().out == script(PARSER)
    with pytest.raises(SystemExit):
        main(["completion", "fish"])


def test_the_walk_sees_every_command_of_the_parser() -> None:
    paths = {node.path for node in NODES}
    top = set(next(node for node in NODES if node.path == ()).commands)
    assert {"run", "validate", "plan", "status", "retry", "watch", "consume", "completion"} <= top
    assert {("config", "show"), ("auth", "check"), ("run",), ("completion",)} <= paths


def test_the_bash_script_is_valid_bash(tmp_path: Path) -> None:
    script = tmp_path / "batchsub.bash"
    script.write_text(bash_script(PARSER))
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)


def test_bash_completes_commands_flags_choices_and_paths(tmp_path: Path) -> None:
    (tmp_path / "manifests").mkdir()
    (tmp_path / "ca.pem").write_text("")
    cases = {
        "commands": ["batchsub", ""],
        "a command": ["batchsub", "ru"],
        "a flag": ["batchsub", "run", "--prog"],
        "a choice": ["batchsub", "run", "--progress", ""],
        "a choice after =": ["batchsub", "run", "--progress", "=", "o"],
        "just after =": ["batchsub", "run", "--log-format", "="],
        "a subcommand": ["batchsub", "config", ""],
        "its flag": ["batchsub", "config", "show", "--js"],
        "a directory": ["batchsub", "run", ""],
        "a file": ["batchsub", "run", "manifests", "--ca-file", "c"],
        "after a value": ["batchsub", "run", "--rate", "5", "--rat"],
        "a value of no choice": ["batchsub", "run", "--rate", ""],
        "after a global flag": ["batchsub", "--config", "x.toml", "comp"],
        "a shell": ["batchsub", "completion", ""],
        "the report format": ["batchsub", "report", "--format", ""],
    }
    got = dict(zip(cases, bash_complete(list(cases.values()), tmp_path), strict=True))
    assert {"run", "validate", "config", "completion", "watch"} <= got["commands"]
    assert got["a command"] == {"run"}
    assert got["a flag"] == {"--progress"}
    assert got["a choice"] == {"auto", "on", "off"}
    assert got["a choice after ="] == {"on", "off"}
    assert got["just after ="] == {"auto", "json", "console"}
    assert got["a subcommand"] == {"show"}
    assert got["its flag"] == {"--json"}
    assert got["a directory"] == {"manifests"}  # a folder argument: folders only
    assert got["a file"] == {"ca.pem"}
    assert got["after a value"] == {"--rate"}
    assert got["a value of no choice"] == set()
    assert got["after a global flag"] == {"completion"}
    assert got["a shell"] == {"bash", "zsh"}
    assert got["the report format"] == {"json", "csv"}


def _flags_of(node: Node) -> set[str]:
    return {name for arg in node.flags for name in arg.names}


def test_bash_completes_every_flag_and_choice_of_every_command(tmp_path: Path) -> None:
    cases: list[list[str]] = []
    expected: list[set[str]] = []
    for node in NODES:
        cases.append(["batchsub", *node.path, "-"])
        expected.append(_flags_of(node))
        if node.commands:
            cases.append(["batchsub", *node.path, ""])
            expected.append(set(node.commands))
        for arg in node.flags:
            if arg.choices:
                cases.append(["batchsub", *node.path, arg.names[-1], ""])
                expected.append(set(arg.choices))
    # Read from argparse itself, not from the walk: the walk must miss nothing.
    [commands] = [a for a in PARSER._actions if isinstance(a, argparse._SubParsersAction)]
    run = commands.choices["run"]
    assert _flags_of(next(n for n in NODES if n.path == ("run",))) == set(
        run._option_string_actions
    )
    assert bash_complete(cases, tmp_path) == expected


def zsh_complete(line: str, cwd: Path) -> set[str]:
    """What zsh's completion system offers for ``line`` (completing at its end), typed with a
    TAB into an interactive zsh in a pseudo-terminal (zpty), as a person would."""
    (cwd / "_batchsub").write_text(zsh_script(PARSER))
    driver = cwd / "driver.zsh"
    driver.write_text(_ZSH_DRIVER.replace("FOLDER", shlex.quote(str(cwd))))
    result = subprocess.run(
        ["zsh", "-f", str(driver), line], capture_output=True, cwd=cwd, timeout=60
    )
    out = result.stdout.decode("utf-8", "replace")
    assert result.returncode == 0, out + result.stderr.decode("utf-8", "replace")
    return set(re.findall(r'(?<!")<WORD>([^\r\n\x1b]*)', out))


# Each match compadd adds is printed as <WORD>match (compadd wrapped: the usual way to read
# what a completion offers without a screen). Each step waits for a marker the child prints,
# never for a fixed time: READY once set up, COMPDONE once the TAB's completion is over (the
# markers are written so that the echo of the command typed does not match them).
_ZSH_DRIVER = r"""
zmodload zsh/zpty
zpty -b child zsh -f -i
zpty -w child 'PS1="" LISTPROMPT=""; unsetopt auto_list list_ambiguous beep'
zpty -w child 'fpath=(FOLDER $fpath); autoload -Uz compinit; compinit -u -D'
zpty -w child 'words() { print -rl -- "<WORD>"${^@} > /dev/tty; }'
zpty -w child 'compadd() { local -a w; builtin compadd -O w "$@"; words $w; builtin compadd "$@"; }'
zpty -w child '_drive() { zle complete-word; print -r -- "COMP""DONE" > /dev/tty; }'
zpty -w child 'zle -N _drive; bindkey "^I" _drive; print READY${:-MARK}'
zpty -r child out '*READYMARK*'
zpty -w -n child "$1"$'	'
zpty -r child out '*COMPDONE*'
print -r -- "$out"
zpty -d child
"""


needs_zsh = pytest.mark.skipif(
    shutil.which("zsh") is None, reason="zsh is not installed (apt-get install -y zsh)"
)


@needs_zsh
def test_the_zsh_script_is_valid_zsh(tmp_path: Path) -> None:
    script = tmp_path / "_batchsub"
    script.write_text(zsh_script(PARSER))
    subprocess.run(["zsh", "-n", str(script)], check=True, timeout=30)


@needs_zsh
@pytest.mark.slow
def test_zsh_completes_commands_flags_choices_and_paths(tmp_path: Path) -> None:
    (tmp_path / "manifests").mkdir()
    (tmp_path / "ca.pem").write_text("")
    top = next(node for node in NODES if node.path == ())
    assert zsh_complete("batchsub ", tmp_path) == set(top.commands)
    assert zsh_complete("batchsub config ", tmp_path) == {"show"}
    assert zsh_complete("batchsub run --pro", tmp_path) == {"--progress", "--project-id"}
    assert zsh_complete("batchsub run --progress ", tmp_path) == {"auto", "on", "off"}
    assert zsh_complete("batchsub report --format=", tmp_path) == {"json", "csv"}
    assert zsh_complete("batchsub run manifests --ca-file c", tmp_path) == {"ca.pem"}
    assert zsh_complete("batchsub completion ", tmp_path) == {"bash", "zsh"}
