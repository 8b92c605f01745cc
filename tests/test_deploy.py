"""The image and the Kubernetes manifests agree with each other and with the code.

The Dockerfile, ``.dockerignore``, ``requirements.lock``, ``.ci/run`` and every manifest of
``deploy/`` are read as files (PyYAML for the manifests) and checked against what batchsub
really has: its settings, commands, metrics routes, user, port and paths. Building and running
the image is ``deploy/build-local.sh --smoke`` (it needs podman, so CI does not).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from batchsub.commands._parser import build_parser
from batchsub.jobs import JobSpec
from batchsub.manifest import parse_manifest_bytes
from batchsub.metrics import Metrics, create_metrics_app
from batchsub.settings import Settings
from batchsub.sources.directory import iter_manifest_paths
from tests.support import REPO

DEPLOY = REPO / "deploy"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


# --- the Dockerfile -------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each Dockerfile line, continuations joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in (REPO / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued RUN
            continue
        pending += " " + line.removesuffix("\\").strip()
        if not line.endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            instructions.append((word.upper(), rest.strip()))
            pending = ""
    return instructions


def final_stage() -> list[tuple[str, str]]:
    steps = dockerfile()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def image_env() -> dict[str, str]:
    """The ENV of the final stage (``KEY=value`` pairs, several per instruction)."""
    env: dict[str, str] = {}
    for word, args in final_stage():
        if word == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def one(word: str) -> str:
    found = [args for w, args in final_stage() if w == word]
    assert len(found) == 1, f"{word}: {found}"
    return found[0]


def setting_env_names() -> set[str]:
    """Every environment variable Settings reads: BATCHSUB_<FIELD> and the SDK's aliases."""
    names = {f"BATCHSUB_{name.upper()}" for name in Settings.model_fields}
    for info in Settings.model_fields.values():
        alias = info.validation_alias
        choices = getattr(alias, "choices", ())
        names.update(str(choice) for choice in choices)
    return names


def test_the_image_runs_as_a_numeric_user_kubernetes_can_check() -> None:
    assert one("USER") == "10001:10001"


def test_the_image_serves_its_metrics_port_to_the_network_and_checks_its_health() -> None:
    env = image_env()
    assert one("EXPOSE") == env["BATCHSUB_METRICS_PORT"] == "9100"
    assert env["BATCHSUB_METRICS_HOST"] == "0.0.0.0"
    assert json.loads(one("HEALTHCHECK").partition("CMD")[2]) == ["batchsub", "healthcheck"]
    # The slim base has no curl; nothing but batchsub itself is asked.
    assert "curl" not in (REPO / "Dockerfile").read_text()


def test_the_image_environment_names_real_settings_and_keeps_the_ledger_on_the_volume() -> None:
    env = image_env()
    batchsub_env = {key for key in env if key.startswith("BATCHSUB_")}
    assert batchsub_env <= setting_env_names()
    assert (
        Path(env["BATCHSUB_LEDGER"]).parent == Path(json.loads(one("VOLUME"))[0]) == Path("/data")
    )
    assert json.loads(one("CMD")) == ["watch", "/data/inbox"]
    entrypoint = json.loads(one("ENTRYPOINT"))
    assert entrypoint == ["/usr/bin/tini", "--", "batchsub"]  # PID 1 reaps and forwards
    build_parser(json.loads(one("CMD"))).parse_args(json.loads(one("CMD")))


def test_dependencies_are_installed_from_the_lock_before_the_code_is_copied() -> None:
    steps = [(word, args) for word, args in dockerfile() if word in ("COPY", "RUN", "FROM")]
    build = steps[: [w for w, _ in steps].index("FROM", 1)]
    copies = [args for word, args in build if word == "COPY"]
    assert copies[0].split() == ["pyproject.toml", "requirements.lock", "./"]
    lock_install = next(i for i, (w, a) in enumerate(build) if "--constraint requirements" in a)
    code_copy = next(i for i, (w, a) in enumerate(build) if w == "COPY" and "batchsub" in a)
    assert lock_install < code_copy  # a code edit leaves the dependency layer cached
    # The final image copies the virtual environment whole: no wheels layer deleted later.
    final = [args for word, args in final_stage() if word == "COPY"]
    assert final == ["--from=build /opt/batchsub /opt/batchsub"]
    assert "/wheels" not in (REPO / "Dockerfile").read_text()


def test_the_base_is_pinned_by_digest_and_the_labels_say_what_it_is() -> None:
    text = (REPO / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.MULTILINE)
    assert base is not None and re.fullmatch(r"python:3\.11-slim@sha256:[0-9a-f]{64}", base[1])
    assert [args for word, args in dockerfile() if word == "FROM"] == [
        "${BASE_IMAGE} AS build",
        "${BASE_IMAGE}",
    ]
    version = re.search(r"^ARG VERSION=(\S+)$", text, re.MULTILINE)
    assert version is not None and version[1] == PYPROJECT["project"]["version"]
    labels = one("LABEL")
    for key in ("source", "version", "licenses", "revision"):
        assert f"org.opencontainers.image.{key}=" in labels
    assert 'licenses="Apache-2.0"' in labels and PYPROJECT["project"]["license"]["text"] in labels


# --- .dockerignore --------------------------------------------------------------------------


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(excludes, pattern) per line, as Docker reads them: the last match wins."""
    rules = []
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.removeprefix("!").strip("/")
        regex = ""
        for index, part in enumerate(re.split(r"(\*\*/|\*\*|\*|\?)", pattern)):
            if index % 2:
                regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}[part]
            else:
                regex += re.escape(part)
        rules.append((not negated, re.compile(regex)))
    return rules


def in_context(path: str) -> bool:
    """Whether ``path`` (relative, with /) is sent to the builder; a directory rule covers all
    under it."""
    parts = path.split("/")
    included = True
    for excludes, pattern in dockerignore_rules():
        if any(pattern.fullmatch("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            included = not excludes
    return included


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "build/lib/batchsub/cli.py",
        "batchsub.egg-info/PKG-INFO",
        "batchsub.db",
        "batchsub.db-wal",
        "batchsub.db.lock",
        "inbox/ledger.db",
        "batchsub/leftover.db",
        "report.json",
        "batchsub/report.json",
        ".mypy_cache/3.11/x.json",
        ".pytest_cache/v/cache",
        "batchsub/__pycache__/cli.cpython-311.pyc",
        "bench/results.md",
        "tests/test_run.py",
        "examples/manifests/api-example.json",
        "Dockerfile",
    ],
)
def test_the_build_context_leaves_out(path: str) -> None:
    assert not in_context(path)


def test_the_build_context_holds_what_the_dockerfile_copies() -> None:
    copied = ["pyproject.toml", "requirements.lock", "README.md", "batchsub/cli.py"]
    copied += ["batchsub/simulator/app.py", "batchsub/py.typed"]
    assert all(in_context(path) for path in copied)
    for word, args in dockerfile():
        if word == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert in_context(source), source


# --- the lock and CI ------------------------------------------------------------------------


def locked() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        requirement = line.partition("#")[0].strip()
        if requirement:
            name, _, version = requirement.partition(";")[0].strip().partition("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_every_dependency_and_test_extra_is_pinned_in_the_lock() -> None:
    pins = locked()
    project = PYPROJECT["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    wanted += PYPROJECT["build-system"]["requires"]
    for spec in map(Requirement, wanted):
        name = spec.name.lower().replace("_", "-")
        assert name in pins, f"{spec} is not in requirements.lock: run deploy/lock.sh"
        assert spec.specifier.contains(pins[name], prereleases=True), (spec, pins[name])
    # No hashes: pip would then check hashes for the whole install and refuse CI's `pip -e`.
    assert "--hash" not in (REPO / "requirements.lock").read_text()


def test_ci_installs_under_the_lock_then_runs_the_readme_command_verbatim() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    command = "pip install -q -e '.[test]' && ruff check . && mypy && pytest"
    assert command in ci and command.replace(" -q", "") in readme
    constraint = ci.index('export PIP_CONSTRAINT="$PWD/requirements.lock"')
    assert constraint < ci.index(command)


# --- the Kubernetes manifests ---------------------------------------------------------------


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def kustomization() -> dict[str, Any]:
    (doc,) = documents(DEPLOY / "kustomization.yaml")
    return doc


def resources() -> list[dict[str, Any]]:
    """Every object kustomization.yaml applies."""
    return [doc for name in kustomization()["resources"] for doc in documents(DEPLOY / name)]


def named(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in resources() if doc["kind"] == kind}


def workloads() -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, pod spec) of every Deployment and Job."""
    for kind in ("Deployment", "Job"):
        for name, doc in named(kind).items():
            yield name, doc["spec"]["template"]["spec"]


def container(pod: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod["containers"]
    assert only["name"] == "batchsub" and only["image"] == "batchsub"
    return dict(only)


def env_of(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every variable the container gets: its env entries and the ConfigMaps' keys."""
    found: dict[str, dict[str, Any]] = {}
    configmaps = named("ConfigMap")
    box = container(pod)
    for source in box.get("envFrom", []):
        for key, value in configmaps[source["configMapRef"]["name"]]["data"].items():
            found[key] = {"value": value}
    for entry in box.get("env", []):
        found[entry["name"]] = entry
    return found


def test_every_manifest_parses_and_kustomization_lists_them() -> None:
    files = sorted(path.name for path in DEPLOY.glob("*.yaml"))
    applied = kustomization()["resources"]
    assert sorted([*applied, "kustomization.yaml", "secret.example.yaml"]) == files
    kinds = sorted(doc["kind"] for doc in resources())
    assert kinds == [
        "ConfigMap",
        "ConfigMap",
        "Deployment",
        "Deployment",
        "Job",
        "PersistentVolumeClaim",
        "PersistentVolumeClaim",
    ]
    assert [image["name"] for image in kustomization()["images"]] == ["batchsub"]


def test_the_three_workloads_are_the_daemon_the_workers_and_a_run() -> None:
    watch = named("Deployment")["batchsub-watch"]["spec"]
    # One writer for the SQLite ledger; the old pod lets go of it before the new one starts.
    assert watch["replicas"] == 1 and watch["strategy"] == {"type": "Recreate"}
    consume = named("Deployment")["batchsub-consume"]["spec"]
    assert consume["replicas"] > 1
    job = named("Job")["batchsub-run"]["spec"]
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    exit_codes = job["podFailurePolicy"]["rules"][0]["onExitCodes"]
    assert exit_codes["values"] == [2]  # a refused credential is never retried
    commands = {name: container(pod)["args"] for name, pod in workloads()}
    assert {name: args[0] for name, args in commands.items()} == {
        "batchsub-watch": "watch",
        "batchsub-consume": "consume",
        "batchsub-run": "run",
    }
    for args in commands.values():
        build_parser(args).parse_args(args)  # real commands and flags


def test_pods_run_as_the_image_user_without_privileges() -> None:
    uid, gid = (int(part) for part in one("USER").split(":"))
    for name, pod in workloads():
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True, name
        assert (context["runAsUser"], context["runAsGroup"], context["fsGroup"]) == (uid, gid, gid)
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        box = container(pod)["securityContext"]
        assert box["allowPrivilegeEscalation"] is False
        assert box["readOnlyRootFilesystem"] is True
        assert box["capabilities"] == {"drop": ["ALL"]}
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        tmp = next(m for m in container(pod)["volumeMounts"] if m["mountPath"] == "/tmp")
        assert "emptyDir" in volumes[tmp["name"]]  # the root filesystem is read-only


def test_the_grace_period_outlasts_the_drain() -> None:
    for name, pod in workloads():
        env = env_of(pod)
        drain = float(env["BATCHSUB_DRAIN_TIMEOUT"]["value"])
        assert drain == Settings.model_fields["drain_timeout"].default
        # The drain, then the report and the ledger's last commit, before SIGKILL.
        assert pod["terminationGracePeriodSeconds"] >= drain + 10, name


def test_every_variable_set_is_a_real_setting_and_secrets_come_from_the_secret() -> None:
    real = setting_env_names()
    secret_backed = {"BATCHSUB_AUTH_TOKEN", "HUAWEICLOUD_SDK_AK", "HUAWEICLOUD_SDK_SK"}
    secret_backed |= {"BATCHSUB_LEDGER", "BATCHSUB_AMQP_URL"}
    for name, pod in workloads():
        env = env_of(pod)
        assert set(env) <= real, (name, set(env) - real)
        for key in secret_backed & set(env):
            assert env[key]["valueFrom"]["secretKeyRef"]["name"] == "batchsub-credentials"
        assert "BATCHSUB_IAM_PASSWORD" not in env  # a file, read again at each login
        password = Path(env["BATCHSUB_IAM_PASSWORD_FILE"]["value"])
        mounts = {m["name"]: m["mountPath"] for m in container(pod)["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        (secret_mount,) = [
            Path(mounts[n]) for n, v in volumes.items() if "secret" in v and n in mounts
        ]
        assert password.parent == secret_mount
    consume = env_of(named("Deployment")["batchsub-consume"]["spec"]["template"]["spec"])
    assert "BATCHSUB_LEDGER" in consume  # the workers share a PostgreSQL ledger


def test_probes_ask_the_metrics_app_on_the_image_port() -> None:
    served = {
        route.resource.canonical
        for route in create_metrics_app(Metrics()).router.routes()
        if route.resource is not None
    }
    port = int(one("EXPOSE"))
    for name in ("batchsub-watch", "batchsub-consume"):
        pod = named("Deployment")[name]["spec"]["template"]["spec"]
        box = container(pod)
        ports = {p["name"]: p["containerPort"] for p in box["ports"]}
        assert ports == {"metrics": port}
        readiness, liveness = box["readinessProbe"]["httpGet"], box["livenessProbe"]["httpGet"]
        # Unready while /healthz says so; restarted only when the loop stops answering.
        assert readiness == {"path": "/healthz", "port": "metrics"}
        assert liveness == {"path": "/metrics", "port": "metrics"}
        assert {readiness["path"], liveness["path"]} <= served
        annotations = named("Deployment")[name]["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port)


def test_the_ledger_and_the_drop_folder_are_on_the_persistent_volume() -> None:
    ledger_dir = Path(image_env()["BATCHSUB_LEDGER"]).parent
    claims = set(named("PersistentVolumeClaim"))
    for name in ("batchsub-watch", "batchsub-run"):
        pod = next(p for n, p in workloads() if n == name)
        volumes = {v["name"]: v for v in pod["volumes"]}
        data = next(m for m in container(pod)["volumeMounts"] if m["mountPath"] == "/data")
        assert volumes[data["name"]]["persistentVolumeClaim"]["claimName"] in claims
        assert Path("/data") == ledger_dir
    watch = next(p for n, p in workloads() if n == "batchsub-watch")
    assert Path(container(watch)["args"][1]).is_relative_to(ledger_dir)


def test_resources_are_requested_and_memory_is_bounded() -> None:
    for name, pod in workloads():
        resources = container(pod)["resources"]
        assert set(resources["requests"]) == {"cpu", "memory"}, name
        assert "cpu" not in resources["limits"]  # a CPU limit throttles the event loop
        request = int(resources["requests"]["memory"].removesuffix("Mi"))
        assert 64 <= request <= int(resources["limits"]["memory"].removesuffix("Mi"))


def test_the_job_runs_the_manifests_of_its_configmap(tmp_path: Path) -> None:
    pod = next(p for n, p in workloads() if n == "batchsub-run")
    args = container(pod)["args"]
    mounts = {m["mountPath"]: m["name"] for m in container(pod)["volumeMounts"]}
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[args[1]])
    data = named("ConfigMap")[volume["configMap"]["name"]]["data"]
    for key, text in data.items():
        (item,) = parse_manifest_bytes(text.encode(), key, suffix=Path(key).suffix)
        assert isinstance(item, JobSpec), item
    # A ConfigMap volume is files linked into a hidden, timestamped directory: each manifest
    # is found once, through its link.
    hidden = tmp_path / "..2026_01_01_00_00_00.000000000"
    hidden.mkdir()
    for key, text in data.items():
        (hidden / key).write_text(text)
        os.symlink(f"..data/{key}", tmp_path / key)
    os.symlink(hidden.name, tmp_path / "..data")
    assert [p.name for p in iter_manifest_paths(tmp_path)] == sorted(data)


# --- the example config file ----------------------------------------------------------------


def test_the_example_config_documents_the_new_settings_with_values_that_load(
    tmp_path: Path,
) -> None:
    text = (REPO / "config" / "batchsub.toml").read_text()
    examples = re.findall(r"^# ([a-z_]+ = .+?)(?:[ \t]+#.*)?$", text, re.MULTILINE)
    keys = [line.partition(" = ")[0] for line in examples]
    for new in ("iam_user", "iam_domain", "iam_password_file", "iam_endpoint", "metrics_host"):
        assert new in keys
    assert "iam_password" not in keys  # refused in a config file
    # Every example, uncommented, is a valid setting (the password file must exist to load).
    (tmp_path / "pw").write_text("x")
    lines = [
        f'iam_password_file = "{tmp_path / "pw"}"' if line.startswith("iam_password_file") else line
        for line in examples
        if not line.startswith("ca_file")  # a file that must exist: checked when used
    ]
    config = tmp_path / "all.toml"
    config.write_text("\n".join(lines) + "\n")
    from batchsub.settings import load_settings

    settings = load_settings({}, config)
    assert settings.metrics_host == "127.0.0.1" and settings.iam_user == "deployer"
