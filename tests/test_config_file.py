"""``config/batchsub.toml`` documents every setting, with its default, and loads as shipped."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from batchsub.errors import ConfigError
from batchsub.settings import _NOT_IN_A_FILE, Settings, load_settings
from tests.support import REPO

SHIPPED = REPO / "config" / "batchsub.toml"
# A setting's line, commented out or not: `# rate = 10.0`, `iam_domain = "x"  # a note`.
_KEY_LINE = re.compile(r"(?P<commented>#\s?)?(?P<key>[a-z][a-z0-9_]*) = (?P<value>.+)")


def documented(text: str) -> dict[str, tuple[bool, Any]]:
    """Every setting line of a config file: key -> (commented out, its value as TOML)."""
    found: dict[str, tuple[bool, Any]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        match = _KEY_LINE.fullmatch(line.strip())
        if match is None:
            continue
        key = match["key"]
        assert key not in found, f"line {number}: {key} documented twice"
        value = tomllib.loads(f"value = {match['value']}")["value"]  # a trailing comment is TOML
        found[key] = (match["commented"] is not None, value)
    return found


def gaps(text: str) -> tuple[set[str], set[str]]:
    """(settings the file has no line for, lines of the file that are no setting)."""
    keys = set(documented(text))
    fields = set(Settings.model_fields) - set(_NOT_IN_A_FILE)
    return fields - keys, keys - fields


def test_every_setting_is_documented_and_nothing_else() -> None:
    undocumented, unknown = gaps(SHIPPED.read_text())
    assert undocumented == set(), "settings without a line in config/batchsub.toml"
    assert unknown == set(), "lines of config/batchsub.toml that are no setting"


def test_settings_a_file_must_not_hold_are_named_but_given_no_line() -> None:
    text = SHIPPED.read_text()
    for name in _NOT_IN_A_FILE:
        assert name in Settings.model_fields
        assert name not in documented(text)
        assert re.search(rf"(?m)^# {name}: refused in this file", text), name


def test_each_documented_value_is_the_default_where_there_is_one() -> None:
    for key, (_, value) in documented(SHIPPED.read_text()).items():
        default = Settings.model_fields[key].default
        if default is None:
            continue  # an example (an endpoint, a port); the text says what happens without it
        shown = str(default) if isinstance(default, Path) else default
        assert value == shown, f"{key}: documented {value!r}, default {default!r}"


def test_secrets_are_commented_out() -> None:
    for key, (commented, _) in documented(SHIPPED.read_text()).items():
        if Settings.model_fields[key].annotation == SecretStr | None:
            assert commented, f"{key} is a secret: the shipped file must not set it"


def test_the_shipped_file_loads_as_the_defaults() -> None:
    loaded = load_settings({}, SHIPPED)
    assert loaded == load_settings({})  # no file here (the test runs in tmp_path): defaults


def test_every_example_is_a_valid_value(tmp_path: Path) -> None:
    # Uncommented, every line at once: each example is a value the setting takes.
    lines = [
        re.sub(r"^#\s?", "", line)
        for line in SHIPPED.read_text().splitlines()
        if (match := _KEY_LINE.fullmatch(line.strip())) and match["commented"]
    ]
    every = tmp_path / "every.toml"
    every.write_text("\n".join(lines) + "\n")
    loaded = load_settings({}, every)
    assert set(documented(every.read_text())) == set(Settings.model_fields) - set(_NOT_IN_A_FILE)
    assert loaded.rate == 10.0 and loaded.queue == "dli-jobs"


def test_a_missing_or_unknown_line_is_caught() -> None:
    # The comparison can fail, both ways.
    text = SHIPPED.read_text()
    assert gaps(text.replace("# settle_time = 1.0\n", "")) == ({"settle_time"}, set())
    assert gaps(text + "# settle_tiem = 1.0\n") == (set(), {"settle_tiem"})


def test_a_refused_setting_in_a_file_is_an_error(tmp_path: Path) -> None:
    refused = tmp_path / "refused.toml"
    refused.write_text('iam_password = "x"\n')
    with pytest.raises(ConfigError, match="iam_password: not allowed in a file"):
        load_settings({}, refused)
