"""The loop batchsub's long-running commands run on: uvloop by default, asyncio on request."""

from __future__ import annotations

import asyncio
import inspect

import pytest

from batchsub import eventloop
from batchsub.errors import ConfigError


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_uvloop_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(eventloop.EVENT_LOOP_VARIABLE, raising=False)
    assert eventloop.loop_name() == "uvloop"
    assert eventloop.run(_loop_module()).startswith("uvloop")


def test_asyncio_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(eventloop.EVENT_LOOP_VARIABLE, "asyncio")
    assert eventloop.run(_loop_module()).startswith("asyncio")


def test_an_unknown_loop_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(eventloop.EVENT_LOOP_VARIABLE, "trio")
    coro = _loop_module()
    with pytest.raises(ConfigError, match="BATCHSUB_EVENT_LOOP='trio': must be one of"):
        eventloop.run(coro)
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED  # no "never awaited" warning
