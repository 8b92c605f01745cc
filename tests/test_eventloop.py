"""The loop batchsub's long-running commands run on: uvloop by default, asyncio on request."""

from __future__ import annotations

import asyncio
import gc
import inspect
import sys

import pytest

from batchsub import eventloop
from batchsub.errors import ConfigError
from batchsub.settings import load_settings


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_uvloop_is_the_default() -> None:
    assert load_settings({}).event_loop == "auto"
    assert eventloop.loop_name() == "uvloop"
    assert eventloop.run(_loop_module()).startswith("uvloop")


def test_asyncio_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(eventloop.EVENT_LOOP_VARIABLE, "AsyncIO ")
    settings = load_settings({})
    assert settings.event_loop == "asyncio"
    assert eventloop.run(_loop_module(), settings.event_loop).startswith("asyncio")


def test_an_unknown_loop_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(eventloop.EVENT_LOOP_VARIABLE, "trio")
    with pytest.raises(ConfigError, match="event_loop: Input should be 'auto', 'uvloop' or"):
        load_settings({})


def test_uvloop_asked_for_but_missing_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    assert eventloop.loop_name("auto") == "asyncio"
    coro = _loop_module()
    with pytest.raises(ConfigError, match="BATCHSUB_EVENT_LOOP=uvloop but uvloop is not"):
        eventloop.run(coro, "uvloop")
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED  # no "never awaited" warning


async def _collector_state() -> tuple[int, tuple[int, int, int]]:
    return gc.get_freeze_count(), gc.get_threshold()


def test_a_run_freezes_what_exists_and_collects_less_often_then_restores_it() -> None:
    before = gc.get_threshold()
    frozen, threshold = eventloop.run(_collector_state())
    assert frozen > 10_000  # the modules, classes and objects imported before the run
    assert threshold[0] == 10_000 > before[0] and threshold[1:] == before[1:]
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
