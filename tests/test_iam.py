"""IAM password login against the simulator's ``/v3/auth/tokens``, over real HTTP on loopback.

A token is asked for once per run, again a margin before it expires or when the API says it
must be updated (and that request is sent again), never logged or stored; a wrong password
is one line naming the user and domain, exit 2.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from batchsub.commands.watch import watch
from batchsub.errors import ConfigError, FatalApiError, RetryableError
from batchsub.iam import DOCUMENTED_LIFETIME, IamLogin, IamTokenAuth, password_source
from batchsub.jobs import JobResult, JobSpec, ManifestItem
from batchsub.report import RunAccount
from batchsub.runner import run_source
from batchsub.settings import Settings, load_settings
from batchsub.simulator import RunningSimulator
from batchsub.sources.directory import DirectorySource
from batchsub.sources.dropfolder import DropFolderSource
from batchsub.wiring import build_auth, credential_in_use
from tests.process_support import clean_env, run_batchsub_async
from tests.run_support import settings_for
from tests.support import (
    PROJECT,
    REPO,
    FakeClock,
    SimulatorFactory,
    drop,
    eventually,
    job,
    job_spec,
    names_in,
    write_manifests,
)

USER, DOMAIN, PASSWORD = "deployer", "acme-account", "pw-Secret-0123456789-do-not-log"
USERS = {(DOMAIN, USER): PASSWORD}


async def iam_simulator(simulator: SimulatorFactory, **fields: Any) -> RunningSimulator:
    """A simulator that accepts only tokens it issued to USER (no fixed token, no AK/SK)."""
    sim: RunningSimulator = await simulator(tokens=frozenset(), iam_users=USERS, **fields)
    return sim


def iam_settings(sim: RunningSimulator, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "auth_token": None,
        "iam_user": USER,
        "iam_domain": DOMAIN,
        "iam_password": PASSWORD,
        "iam_endpoint": sim.url,
        **overrides,
    }
    return settings_for(sim.url, tmp_path, **values)


def login(sim: RunningSimulator, password: str = PASSWORD) -> IamLogin:
    return IamLogin(USER, DOMAIN, PROJECT, sim.url, lambda: password, "the test")


# --- a run ----------------------------------------------------------------------------------


async def test_twenty_jobs_are_created_with_one_token_request(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await iam_simulator(simulator)
    write_manifests(tmp_path / "m", 20)
    settings = iam_settings(sim, tmp_path)
    code = await run_source(settings, DirectorySource(tmp_path / "m"), RunAccount())
    assert code == 0
    assert len(sim.store.jobs) == 20 and sim.store.duplicates() == {}
    assert sim.iam.token_requests == 1
    assert len(sim.iam.issued) == 1


class StagedSource:
    """Jobs in two batches; ``between()`` runs once every job of the first is done."""

    def __init__(
        self, first: list[JobSpec], second: list[JobSpec], between: Callable[[], Awaitable[None]]
    ) -> None:
        self._batches = (first, second)
        self._between = between
        self._done = 0
        self._first_done = asyncio.Event()
        self.results: list[JobResult] = []

    async def items(self) -> AsyncIterator[ManifestItem]:
        first, second = self._batches
        for spec in first:
            yield spec
        await self._first_done.wait()
        await self._between()
        for spec in second:
            yield spec

    async def finish(self, item: ManifestItem, result: JobResult) -> None:
        self.results.append(result)
        self._done += 1
        if self._done == len(self._batches[0]):
            self._first_done.set()


def specs(prefix: str, count: int) -> list[JobSpec]:
    return [job_spec(f"{prefix}-{i:02d}") for i in range(count)]


async def run_in_two_batches(
    sim: RunningSimulator, tmp_path: Path, between: Callable[[], Awaitable[None]]
) -> tuple[int, list[str], StagedSource]:
    """Run 10 + 10 jobs with ``between`` in the middle; the code and the token reasons."""
    source = StagedSource(specs("a", 10), specs("b", 10), between)
    with capture_logs() as logs:
        code = await run_source(iam_settings(sim, tmp_path), source, RunAccount())
    reasons = [e["reason"] for e in logs if e["event"] == "iam.token"]
    return code, reasons, source


async def test_a_token_about_to_expire_is_renewed_once_before_it_does(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    lifetime = 2.0  # renewed a tenth of it (0.2 s) before it expires
    sim = await iam_simulator(simulator, token_lifetime=lifetime)

    async def into_the_renewal_margin() -> None:
        (expires,) = sim.iam.issued.values()
        while sim.iam.wall_clock() < expires - lifetime / 20:
            await asyncio.sleep(0.02)

    code, reasons, source = await run_in_two_batches(sim, tmp_path, into_the_renewal_margin)
    assert code == 0 and len(source.results) == 20
    assert len(sim.store.jobs) == 20 and sim.store.duplicates() == {}
    # Renewed ahead of time, not after a refusal: one more request, "expiring".
    assert reasons == ["first", "expiring"] and sim.iam.token_requests == 2


async def test_the_token_must_be_updated_renews_once_and_resends(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await iam_simulator(simulator)

    async def password_changed() -> None:  # every token of the account is revoked
        sim.iam.revoke_all()

    code, reasons, source = await run_in_two_batches(sim, tmp_path, password_changed)
    assert code == 0 and {r.outcome.value for r in source.results} == {"created"}
    # Up to 8 creates in flight got 401 APIG.0307 together: one new token for all of them,
    # and each refused create was sent again (a 401 was not processed): no job twice.
    assert reasons == ["first", "must be updated"] and sim.iam.token_requests == 2
    assert len(sim.store.jobs) == 20 and sim.store.duplicates() == {}
    sent = [path for _, path in sim.store.arrivals if path.endswith("/flink-jobs")]
    assert len(sent) > 20  # the refused ones (401 before the handler), sent again


async def test_a_token_refused_again_after_renewal_stops_the_run(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    # IAM issues tokens the API will not take (here: expired at birth): renew once, then stop.
    sim = await iam_simulator(simulator, token_lifetime=-1.0)
    write_manifests(tmp_path / "m", 3)
    account = RunAccount()
    code = await run_source(iam_settings(sim, tmp_path), DirectorySource(tmp_path / "m"), account)
    assert code == 2
    assert sim.store.create_requests == 0  # the list call before any create was refused
    assert sim.iam.token_requests == 2


async def test_iam_down_when_the_daemon_starts_does_not_stop_it(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await iam_simulator(simulator)
    sim.iam.unavailable = True
    inbox = tmp_path / "inbox"
    source = DropFolderSource(inbox, settle_time=0.0, rescan_interval=0.2, retry_delay=0.1)
    source.prepare()
    task = asyncio.create_task(watch(iam_settings(sim, tmp_path), source))
    try:
        drop(inbox, "first.json", job("first"))
        await eventually(lambda: sim.iam.token_requests >= 3, timeout=10)
        assert not task.done() and names_in(inbox / "done") == []
        sim.iam.unavailable = False  # IAM is back
        await eventually(lambda: names_in(inbox / "done") == ["first.json"], timeout=10)
    finally:
        source.stop()
        code = await asyncio.wait_for(task, 10)
    assert code == 0 and [j.name for j in sim.store.jobs] == ["first"]


# --- the token source, with a fake clock ----------------------------------------------------


async def test_the_token_is_cached_until_its_renewal_margin(simulator: SimulatorFactory) -> None:
    sim = await iam_simulator(simulator, token_lifetime=1000.0)
    clock = FakeClock(0.0)
    auth = IamTokenAuth(login(sim), clock=clock)
    try:
        first = await auth.token()
        assert [await auth.token() for _ in range(5)] == [first] * 5
        clock.now = 899.9  # the margin is a tenth of the lifetime, at most 10 minutes
        assert await auth.token() == first
        clock.now = 900.0
        second = await auth.token()
        assert second != first and sim.iam.token_requests == 2
        assert auth.headers("GET", sim_url(sim), b"") == {"X-Auth-Token": second}
        # Many callers at once when it is due: one request.
        clock.now = 2000.0
        tokens = await asyncio.gather(*(auth.token() for _ in range(8)))
        assert len(set(tokens)) == 1 and sim.iam.token_requests == 3
    finally:
        await auth.close()


async def test_concurrent_renewals_of_one_stale_token_make_one_request(
    simulator: SimulatorFactory,
) -> None:
    sim = await iam_simulator(simulator)
    auth = IamTokenAuth(login(sim))
    try:
        stale = await auth.token()
        renewed = await asyncio.gather(*(auth.renew(stale) for _ in range(8)))
        assert renewed == [True] * 8 and sim.iam.token_requests == 2
        assert await auth.token() != stale
    finally:
        await auth.close()


async def test_iam_out_of_reach_keeps_a_valid_token_and_fails_once_it_expired(
    simulator: SimulatorFactory,
) -> None:
    sim = await iam_simulator(simulator, token_lifetime=1000.0)
    clock = FakeClock(0.0)
    auth = IamTokenAuth(login(sim), clock=clock, timeout=2.0)
    try:
        first = await auth.token()
        await sim.close()  # nobody listens at the IAM endpoint any more
        clock.now = 950.0  # due for renewal, still valid
        with capture_logs() as logs:
            assert await auth.token() == first
        assert [e["event"] for e in logs] == ["iam.renewal_failed"]
        clock.now = 1000.0
        with pytest.raises(RetryableError, match="cannot connect to the IAM endpoint"):
            await auth.token()
    finally:
        await auth.close()


async def test_a_wrong_password_is_fatal_named_and_never_retried(
    simulator: SimulatorFactory,
) -> None:
    sim = await iam_simulator(simulator)
    auth = IamTokenAuth(login(sim, password="not-the-password"))
    try:
        with pytest.raises(FatalApiError) as caught:
            await auth.token()
    finally:
        await auth.close()
    message = str(caught.value)
    assert f"user {USER} of domain {DOMAIN}" in message and "password is wrong" in message
    assert "not-the-password" not in message
    assert sim.iam.token_requests == 1  # IAM locks a user after a few wrong passwords


async def test_a_password_file_is_read_again_at_each_login(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await iam_simulator(simulator, token_lifetime=1000.0)
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")  # as `echo` writes it
    read, origin = password_source(None, secret)
    clock = FakeClock(0.0)
    auth = IamTokenAuth(IamLogin(USER, DOMAIN, PROJECT, sim.url, read, origin), clock=clock)
    try:
        await auth.token()
        # The Secret is rotated: the new password is in the file and in IAM.
        secret.write_text("rotated-password")
        sim.iam.users = {(DOMAIN, USER): "rotated-password"}
        clock.now = 950.0
        await auth.token()
        assert sim.iam.token_requests == 2
    finally:
        await auth.close()
    assert origin == f"file {secret}" and PASSWORD not in repr(auth)


def test_an_answer_without_expiry_is_taken_as_the_documented_24_hours() -> None:
    from batchsub.iam import _lifetime

    assert _lifetime(b'{"token": {}}', 0.0) == DOCUMENTED_LIFETIME
    assert _lifetime(b"not json", 0.0) == DOCUMENTED_LIFETIME
    body = b'{"token": {"issued_at": "2026-01-01T00:00:00.000000Z",'
    body += b' "expires_at": "2026-01-02T00:00:00.000000Z"}}'
    assert _lifetime(body, 0.0) == 24 * 3600.0


def sim_url(sim: RunningSimulator) -> Any:
    from yarl import URL

    return URL(sim.url)


# --- settings and precedence ----------------------------------------------------------------


def settings_of(**values: Any) -> Settings:
    return load_settings({"project_id": PROJECT, "region": "cn-north-4", **values})


def test_a_token_wins_then_the_iam_password_then_ak_sk() -> None:
    iam = {"iam_user": USER, "iam_domain": DOMAIN, "iam_password": PASSWORD}
    aksk = {"ak": "AKTEST0000000000", "sk": "sk-0123456789"}
    both = settings_of(auth_token="tok-123", **iam, **aksk)
    assert build_auth(both, PROJECT).describe() == "token from BATCHSUB_AUTH_TOKEN"
    chosen = build_auth(settings_of(**iam, **aksk), PROJECT)
    assert isinstance(chosen, IamTokenAuth)
    assert chosen.describe() == (
        f"IAM user {USER} of domain {DOMAIN} (password from BATCHSUB_IAM_PASSWORD, "
        "token from https://iam.cn-north-4.myhuaweicloud.com)"
    )
    assert build_auth(settings_of(**aksk), PROJECT).describe().startswith("AK/SK")


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"iam_user": USER, "iam_password": PASSWORD}, "BATCHSUB_IAM_DOMAIN is not set"),
        ({"iam_domain": DOMAIN, "iam_password": PASSWORD}, "BATCHSUB_IAM_USER is not set"),
        ({"iam_user": USER, "iam_domain": DOMAIN}, "BATCHSUB_IAM_PASSWORD or BATCHSUB_IAM_PA"),
        (
            {"iam_user": USER, "iam_domain": DOMAIN, "iam_password": "x", "iam_password_file": "f"},
            "not both",
        ),
        (
            {"iam_user": USER, "iam_domain": DOMAIN, "iam_password_file": "/nonexistent/pw"},
            "/nonexistent/pw: cannot read it: No such file or directory",
        ),
    ],
)
def test_an_incomplete_iam_credential_says_what_is_missing(
    values: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        build_auth(settings_of(**values), PROJECT)


def test_the_iam_endpoint_follows_the_region() -> None:
    assert settings_of().resolved_iam_endpoint() == "https://iam.cn-north-4.myhuaweicloud.com"
    eu = settings_of(region="eu-west-101")
    assert eu.resolved_iam_endpoint() == "https://iam.eu-west-101.myhuaweicloud.eu"
    with pytest.raises(ConfigError, match="--iam-endpoint"):
        load_settings({}).resolved_iam_endpoint()


def test_the_password_is_refused_in_the_config_file_but_user_and_domain_are_not(
    tmp_path: Path,
) -> None:
    config = tmp_path / "batchsub.toml"
    config.write_text(f'iam_user = "{USER}"\niam_domain = "{DOMAIN}"\n')
    settings = load_settings({}, config)
    assert (settings.iam_user, settings.iam_domain) == (USER, DOMAIN)
    config.write_text(f'iam_user = "{USER}"\niam_password = "{PASSWORD}"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings({}, config)
    assert "iam_password: not allowed in a file" in str(caught.value)
    assert PASSWORD not in str(caught.value)


def test_config_show_names_the_credential_in_use() -> None:
    shown = credential_in_use(settings_of(iam_user=USER, iam_domain=DOMAIN, iam_password="x"))
    assert shown.startswith(f"IAM user {USER} of domain {DOMAIN}")
    assert credential_in_use(load_settings({})).startswith("none: no credentials")


# --- as a user runs it ----------------------------------------------------------------------


def iam_env(sim: RunningSimulator, password: str = PASSWORD) -> dict[str, str]:
    return {
        "BATCHSUB_IAM_USER": USER,
        "BATCHSUB_IAM_DOMAIN": DOMAIN,
        "BATCHSUB_IAM_PASSWORD": password,
        "BATCHSUB_IAM_ENDPOINT": sim.url,
        "BATCHSUB_ENDPOINT": sim.url,
        "HUAWEICLOUD_SDK_PROJECT_ID": PROJECT,
    }


async def batchsub(*args: str | Path, env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    """``batchsub ARGS`` in a process (this loop keeps serving the simulator)."""
    full = {**clean_env(), "PYTHONPATH": str(REPO), **env}
    code, out, err = await run_batchsub_async(*args, env=full, cwd=cwd)
    return code, out.decode(), err.decode()


def files_under(folder: Path) -> Iterable[Path]:
    return (path for path in folder.rglob("*") if path.is_file())


@pytest.mark.slow
async def test_a_new_user_with_only_a_password_never_sees_it_again(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await iam_simulator(simulator)
    write_manifests(tmp_path / "m", 20)
    env = iam_env(sim)
    outputs: list[str] = []
    code, out, err = await batchsub(
        "run", "m", "--report", "report.json", "--log-format", "json", "--log-level", "debug",
        env=env, cwd=tmp_path,
    )  # fmt: skip
    outputs += [out, err]
    assert code == 0, err
    assert len(sim.store.jobs) == 20 and sim.iam.token_requests == 1
    code, out, err = await batchsub("auth", "check", env=env, cwd=tmp_path)
    outputs += [out, err]
    assert code == 0, err
    assert out.startswith(f"credential OK: IAM user {USER} of domain {DOMAIN}")
    assert "(20 Flink Jar jobs there)" in out
    for args in (("config", "show"), ("config", "show", "--json"), ("status",), ("report",)):
        code, out, err = await batchsub(*args, env=env, cwd=tmp_path)
        assert code == 0, err
        outputs += [out, err]
    assert any(f"# credential in use: IAM user {USER} of domain" in text for text in outputs)
    # Neither the password nor any token issued is in any output or any file left behind.
    secrets = [PASSWORD, *sim.iam.issued]
    assert len(secrets) == 3  # the run's token and auth check's
    for path in files_under(tmp_path):
        outputs.append(path.read_bytes().decode("utf-8", "replace"))
    assert len(outputs) > 12  # the ledger, its WAL and the report among them
    leaks = [secret[:8] for secret in secrets for text in outputs if secret in text]
    assert leaks == []


@pytest.mark.slow
async def test_a_wrong_password_exits_2_with_one_line_naming_user_and_domain(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await iam_simulator(simulator)
    write_manifests(tmp_path / "m", 3)
    env = iam_env(sim, password="wrong-password-42")
    for args in (("run", "m"), ("auth", "check")):
        code, out, err = await batchsub(*args, env=env, cwd=tmp_path)
        assert code == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, err
        assert lines[0].startswith(
            f"batchsub: error: IAM refused the password of user {USER} of domain {DOMAIN}: "
            "The username or password is wrong."
        )
        assert "wrong-password-42" not in err + out
    assert sim.store.create_requests == 0 and sim.iam.token_requests == 2
    assert not (tmp_path / "batchsub.db").exists()  # refused before the ledger was opened


@pytest.mark.slow
async def test_auth_check_names_the_credential_it_used(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    from tests.run_support import AK, SK

    sim = await simulator(tokens=frozenset(), aksk={AK: SK})
    base = {"BATCHSUB_ENDPOINT": sim.url, "HUAWEICLOUD_SDK_PROJECT_ID": PROJECT}
    good = {**base, "HUAWEICLOUD_SDK_AK": AK, "HUAWEICLOUD_SDK_SK": SK}
    code, out, err = await batchsub("auth", "check", env=good, cwd=tmp_path)
    assert code == 0, err
    assert out.startswith(f"credential OK: AK/SK HUAWEICLOUD_SDK_AK={AK[:4]}")
    assert [path for _, path in sim.store.arrivals] == [f"/v1.0/{PROJECT}/streaming/jobs"]
    code, out, err = await batchsub("auth", "check", "-o", "json", env=good, cwd=tmp_path)
    assert code == 0, err
    answer = json.loads(out)
    assert answer["ok"] is True and answer["project_id"] == PROJECT and answer["jobs"] == 0
    assert answer["endpoint"] == sim.url and answer["credential"].startswith("AK/SK")
    code, out, err = await batchsub(
        "auth", "check", env={**base, "BATCHSUB_AUTH_TOKEN": "not-a-token"}, cwd=tmp_path
    )
    assert code == 2 and out == ""
    assert err.startswith("batchsub: error: the API refused the credential token from")
    assert len(sim.store.jobs) == 0


def test_the_password_has_no_flag(capsys: pytest.CaptureFixture[str]) -> None:
    from batchsub.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["run", "m", "--iam-password", PASSWORD])
    assert exited.value.code == 2
    assert "unrecognized arguments: --iam-password" in capsys.readouterr().err
