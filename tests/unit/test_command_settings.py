"""Each command's ``--help`` lists exactly the SIEVE_* variables its code reads (issue 12.3).

A command declares its settings (``@reads_settings(...)``) and its help is made from the
declaration; here the declaration is checked against the code, read by
:mod:`tests.fixtures.settings_reads` from the command's callback through every first-party function
its settings object reaches (and every function it calls that builds one). So a command
that starts reading a setting, or stops, fails here until its declaration says so.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from streams.cli import COMMANDS, cli
from streams.settings import ENV_PREFIX, Settings, declared_settings, reads_settings
from tests.fixtures.settings_reads import SettingsReads, Untraceable, first_party_modules

REPO = Path(__file__).resolve().parents[2]
FIELDS = frozenset(Settings.model_fields)
# A variable in the help's environment list: "SIEVE_NAME=<default>" at the start of a line.
LISTED = re.compile(rf"^\s*({ENV_PREFIX}[A-Z0-9_]+)=", re.MULTILINE)


def _walk(
    command: click.Command, path: tuple[str, ...], groups: tuple[click.Command, ...]
) -> Iterator[tuple[tuple[str, ...], click.Command, tuple[click.Command, ...]]]:
    yield path, command, groups
    if isinstance(command, click.Group):
        for name, subcommand in sorted(command.commands.items()):
            yield from _walk(subcommand, (*path, name), (*groups, command))


def _all_commands() -> dict[str, tuple[tuple[str, ...], click.Command, tuple[click.Command, ...]]]:
    context = click.Context(cli)
    found = {}
    for name in sorted(COMMANDS):
        command = cli.get_command(context, name)
        assert command is not None, name
        for path, each, groups in _walk(command, (name,), ()):
            found[" ".join(path)] = (path, each, groups)
    return found


COMMAND_TREE = _all_commands()
LEAVES = sorted(name for name, (_, c, _) in COMMAND_TREE.items() if not isinstance(c, click.Group))
GROUPS = sorted(name for name, (_, c, _) in COMMAND_TREE.items() if isinstance(c, click.Group))


@pytest.fixture(scope="module")
def analysis() -> SettingsReads:
    return SettingsReads(FIELDS)


def _reads(analysis: SettingsReads, name: str) -> frozenset[str]:
    """What the code of command ``name`` reads: its callback's and its groups' (click runs
    a group's callback before its subcommand's)."""
    _, command, groups = COMMAND_TREE[name]
    found: set[str] = set()
    for each in (*groups, command):
        if each.callback is None:
            continue
        callback = inspect.unwrap(each.callback)
        found |= analysis.reads(analysis.function(callback.__module__, callback.__qualname__))
    return frozenset(found)


def _listed(name: str) -> set[str]:
    path, _, _ = COMMAND_TREE[name]
    shown = CliRunner().invoke(cli, [*path, "--help"], terminal_width=80)
    assert shown.exit_code == 0, shown.output
    return set(LISTED.findall(shown.output))


def _variables(fields: frozenset[str]) -> set[str]:
    return {f"{ENV_PREFIX}{field.upper()}" for field in fields}


def test_every_command_is_found() -> None:
    # A stale list would make the tests below pass vacuously.
    assert {"worker", "status", "replay", "broker start", "subject erase", "keys new"} <= set(
        LEAVES
    )
    assert {name.split()[0] for name in LEAVES} == set(COMMANDS)


@pytest.mark.parametrize("name", LEAVES)
def test_the_declaration_is_what_the_code_reads(analysis: SettingsReads, name: str) -> None:
    _, command, _ = COMMAND_TREE[name]
    declared = declared_settings(command)
    assert declared is not None, f"`sieve {name}` declares no settings: add @reads_settings(...)"
    read = _reads(analysis, name)
    assert declared == read, (
        f"`sieve {name}`: declared but not read: {sorted(declared - read)};"
        f" read but not declared: {sorted(read - declared)}"
    )


@pytest.mark.parametrize("name", LEAVES)
def test_help_lists_exactly_the_variables_the_command_reads(
    analysis: SettingsReads, name: str
) -> None:
    assert _listed(name) == _variables(_reads(analysis, name))


@pytest.mark.parametrize("name", GROUPS)
def test_a_group_lists_what_its_commands_read(analysis: SettingsReads, name: str) -> None:
    path, group, _ = COMMAND_TREE[name]
    assert isinstance(group, click.Group)
    subcommands = [" ".join((*path, sub)) for sub in group.commands]
    read = frozenset().union(*(_reads(analysis, sub) for sub in subcommands))
    assert _listed(name) == _variables(read)


def test_commands_read_fewer_variables_than_there_are(analysis: SettingsReads) -> None:
    # The issue: every --help listed all of them. Only the demo, which hands every setting
    # to the worker it starts, reads them all.
    everything = [name for name in LEAVES if _reads(analysis, name) == FIELDS]
    assert everything == ["demo"]
    assert len(_listed("status")) == 4


def test_settings_are_built_only_where_the_analysis_looked(analysis: SettingsReads) -> None:
    for name in LEAVES:
        _reads(analysis, name)
    looked = {(function.module, function.qualname) for function in analysis.visited}
    unseen = [
        f"{module}.{qualname}:{line}"
        for module in first_party_modules(REPO)
        for qualname, line in analysis.construction_sites(module)
        if (module, qualname) not in looked
    ]
    # A Settings built where no command's analysis reaches reads settings nobody declares.
    assert unseen == []


def test_the_top_level_help_lists_every_variable() -> None:
    shown = CliRunner().invoke(cli, ["--help"], terminal_width=80)
    assert set(LISTED.findall(shown.output)) == _variables(FIELDS)


def test_help_fits_80_columns() -> None:
    for name in ("worker", "collect", "publish"):
        path, _, _ = COMMAND_TREE[name]
        shown = CliRunner().invoke(cli, [*path, "--help"], terminal_width=80)
        assert max(len(line) for line in shown.output.splitlines()) <= 80, name


def test_a_declaration_names_only_settings() -> None:
    with pytest.raises(ValueError, match="not settings: raw_topik"):
        reads_settings("raw_topic", "raw_topik")
    with pytest.raises(TypeError, match=r"above @click\.command"):
        reads_settings("raw_topic")(lambda: None)


# --- the analysis itself, on small made-up packages -------------------------------------

CONF = """
class Conf:
    host: str
    port: int
    root: str
    secret_path: str

    @property
    def address(self):
        return f"{self.host}:{self.port}"
"""


def _analyse(command: str, **modules: str) -> frozenset[str]:
    sources = {"fake.conf": CONF, **{f"fake.{name}": text for name, text in modules.items()}}
    analysis = SettingsReads(
        ("host", "port", "root", "secret_path"),
        sources=sources,
        first_party=("fake",),
        settings_class=("fake.conf", "Conf"),
    )
    return analysis.reads(analysis.function("fake.cmd", command))


def test_analysis_follows_settings_into_callees_properties_and_helpers() -> None:
    cmd = """
from typing import cast
from fake.conf import Conf
from fake import lib

def _conf() -> Conf:
    return Conf()

def command():
    conf = cast(Callable[[], Conf], Conf)()
    lib.connect(conf)
    lib.open_root(settings=conf.model_copy(update={}))
    print(_conf().secret_path)

def other():
    from fake.lib import own
    own()
"""
    lib = """
from fake.conf import Conf

def connect(conf: Conf) -> None:
    print(conf.address)

def open_root(*, settings: Conf) -> None:
    copied = settings
    print(getattr(copied, "root"))

def own() -> None:
    print(Conf().port)
"""
    assert _analyse("command", cmd=cmd, lib=lib) == {"host", "port", "root", "secret_path"}
    # A function handed no settings object that builds its own is read too.
    assert _analyse("other", cmd=cmd, lib=lib) == {"port"}


def test_a_dynamic_read_reads_every_field() -> None:
    cmd = """
from fake.conf import Conf

def command():
    conf = Conf()
    for name in ("host",):
        print(getattr(conf, name))
"""
    assert _analyse("command", cmd=cmd) == {"host", "port", "root", "secret_path"}


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ("self_like.conf = conf", "cannot follow"),
        ("print(conf)", "passed to print"),
        ("items = [conf]", "cannot follow"),
        ("conf.hots", "not a setting"),
        ("return conf", "cannot follow"),
    ],
)
def test_analysis_refuses_what_it_cannot_follow(body: str, complaint: str) -> None:
    cmd = f"""
from fake.conf import Conf

def command():
    conf = Conf()
    {body}
"""
    with pytest.raises(Untraceable, match=complaint):
        _analyse("command", cmd=cmd)


def test_a_read_the_declaration_misses_fails_the_check() -> None:
    # The negative control of test_the_declaration_is_what_the_code_reads: a command that
    # reads one more setting than it declares is caught.
    cmd = """
from fake.conf import Conf

def command():
    conf = Conf()
    print(conf.host, conf.root)
"""
    declared = frozenset({"host"})
    assert _analyse("command", cmd=cmd) - declared == {"root"}
