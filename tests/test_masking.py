"""Passwords in URLs masked wherever they are shown: mask_url, scrub, the settings, library logs."""

from __future__ import annotations

import io
import logging

import pytest

from batchsub.logs import configure_logging
from batchsub.masking import mask_url, scrub, url_passwords
from batchsub.settings import load_settings


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://bob:s3cr%40t@db:5432/x", "postgresql://bob:***@db:5432/x"),
        ("postgres://db/x?user=bob&password=s3cret&ssl=1", "postgres://db/x?user=bob&password=***&ssl=1"),
        ("host=db password=s3cret user=bob", "host=db password=*** user=bob"),
        ("postgresql://bob@db/x", "postgresql://bob@db/x"),
        ("postgresql://:s3cret@db/x", "postgresql://:***@db/x"),
        ("postgresql://bob:p@ss@db/x", "postgresql://bob:***@db/x"),  # an @ left unencoded
        ("amqp://guest:guest@127.0.0.1:5672/", "amqp://guest:***@127.0.0.1:5672/"),
        ("amqps://user:s3cret@[::1]:5671/vhost", "amqps://user:***@[::1]:5671/vhost"),
        ("https://user:s3cret@dli.example.com/", "https://user:***@dli.example.com/"),
        ("https://dli.cn-north-4.myhuaweicloud.com", "https://dli.cn-north-4.myhuaweicloud.com"),
        ("batchsub.db", "batchsub.db"),
        ("postgresql://bob:s3cret@[db/x", "postgresql://bob:***@[db/x"),  # urlsplit refuses it
        ("postgresql://bob:s3cret@db:port/x", "postgresql://bob:***@db:port/x"),
    ],
)  # fmt: skip
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_url_passwords_finds_every_spelling_and_scrub_removes_them() -> None:
    found = url_passwords("postgresql://bob:s3cr%40t@db/x?password=other%21pw")
    assert set(found) == {"s3cr%40t", "s3cr@t", "other!pw", "other%21pw"}
    assert url_passwords("postgresql://bob:s3cret@[db/x") == ["s3cret"]  # urlsplit refuses it
    assert url_passwords("postgresql://bob@db/x") == url_passwords("batchsub.db") == []
    text = "FATAL: password s3cr@t refused (other!pw)"
    assert scrub(text, found) == "FATAL: password *** refused (***)"
    assert scrub("nothing here", found) == "nothing here"


def test_settings_show_urls_with_their_password_masked() -> None:
    settings = load_settings(
        {
            "ledger": "postgresql://bob:pg-s3cret@db/x",
            "amqp_url": "amqp://worker:mq-s3cret@broker/",
            "endpoint": "https://user:ep-s3cret@dli.example.com",
            "sk": "sk-s3cret",
        }
    )
    shown = settings.masked()
    assert shown["ledger"] == "postgresql://bob:***@db/x"
    assert shown["amqp_url"] == "amqp://worker:***@broker/"
    assert shown["endpoint"] == "https://user:***@dli.example.com"
    assert shown["sk"] == "********"
    assert "s3cret" not in repr(shown)
    assert {"pg-s3cret", "mq-s3cret", "ep-s3cret", "sk-s3cret"} <= set(settings.secret_values())


def test_a_library_log_line_never_carries_a_secret() -> None:
    settings = load_settings({"ledger": "postgresql://bob:pg-s3cret@db/x"})
    out = io.StringIO()
    hidden = settings.secret_values()
    configure_logging("json", "info", interactive=False, stream=out, hidden=hidden)
    logging.getLogger("asyncpg.pool").warning("cannot reach %s", "postgresql://bob:pg-s3cret@db/x")
    line = out.getvalue()
    assert "cannot reach postgresql://bob:***@db/x" in line
    assert "s3cret" not in line
