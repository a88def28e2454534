"""docker-compose.yml and docker/Dockerfile, checked without a Docker engine.

- the compose file validates against the official compose-spec JSON schema (vendored in
  tests/schemas/), before and after variable interpolation;
- semantic checks the schema cannot make: ports bound to 127.0.0.1 by default, dependencies,
  postgres healthcheck/volume/init script, the GPU reservation, no literal secret, every
  ``irnn-search`` command and ``IRNN_SEARCH_*`` variable exists in the real CLI and settings,
  the Dockerfile's entrypoint, user, stop signal and install;
- Debian's ``docker-compose config -q`` when that binary is installed (skipped otherwise);
- native rehearsals against a real PostgreSQL (marker ``postgres``): the ``migrate`` service's
  exact shell script, and ``docker/postgres-init.sh`` run as the postgres image runs it (its own
  cluster, superuser ``postgres``), then each role used as its service uses it.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / "docker" / "env.example"
INIT_SCRIPT = ROOT / "docker" / "postgres-init.sh"
SCHEMA = ROOT / "tests" / "schemas" / "compose-spec.json"

#: the variables Compose refuses to start without (``${X:?message}``), as a test sets them
SECRETS = {"IRNN_PG_PASSWORD": "roles-s3cret", "IRNN_PG_ADMIN_PASSWORD": "admin-s3cret"}
DATABASES = {"irnn", "optuna", "mlflow"}
#: the image's ENTRYPOINT; services that keep it run an irnn-search subcommand
IMAGE_ENTRYPOINT = ["irnn-search"]

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


class Refused(ValueError):
    """Compose refuses the file: a required variable (``${X:?message}``) is unset or empty."""


def interpolate(value: Any, env: Mapping[str, str] = SECRETS) -> Any:
    """Compose's variable interpolation (``${X}``, ``${X:-default}``, ``${X-default}``,
    ``${X:?message}``, ``${X?message}``, ``$$``)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, default = m.group(2), m.group(3) or ""
        if op == ":-":
            return env.get(name) or default
        if op == "-":
            return env.get(name, default)
        if (op == ":?" and not env.get(name)) or (op == "?" and name not in env):
            raise Refused(f"{name}: {default}")
        return env.get(name, "")

    return _VAR.sub(sub, value)


def variables(value: Any) -> Iterator[tuple[str, str | None]]:
    """Every ``${NAME...}`` in the raw file, with its default (None when it has none)."""
    if isinstance(value, dict):
        for v in value.values():
            yield from variables(v)
    elif isinstance(value, list):
        for v in value:
            yield from variables(v)
    elif isinstance(value, str):
        for m in _VAR.finditer(value):
            if m.group(0) != "$$":
                yield (m.group(1) or m.group(4)), (m.group(3) if m.group(2) in (":-", "-") else None)


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any]) -> dict[str, Any]:
    """The file as Compose sees it with a .env that sets only the required passwords: every other
    variable at its default."""
    return interpolate(raw, SECRETS)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def as_list(command: Any) -> list[str]:
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def migrate_script(services: dict[str, Any]) -> str:
    migrate = services["migrate"]
    assert as_list(migrate["entrypoint"]) == ["/bin/sh", "-ec"]
    (script,) = as_list(migrate["command"]) if isinstance(migrate["command"], list) else [migrate["command"]]
    return script


def script_lines(script: str) -> list[list[str]]:
    return [shlex.split(line) for line in script.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def cli_invocations(services: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(service, argv after ``irnn-search``) for every irnn-search command the compose file runs."""
    found = []
    for name, service in services.items():
        if "entrypoint" not in service and "build" in service:
            found.append((name, as_list(service.get("command"))))
    for argv in script_lines(migrate_script(services)):
        if argv[0] == "irnn-search":
            found.append(("migrate", argv[1:]))
    return found


# -- schema


def test_compose_file_validates_against_the_compose_spec_schema(raw: dict[str, Any], compose: dict[str, Any]) -> None:
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    for label, doc in (("as written", raw), ("interpolated", compose)):
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
        assert not errors, f"docker-compose.yml ({label}) breaks the compose spec:\n" + "\n".join(errors)
    assert "version" not in raw, "the compose spec has no version: key (Compose ignores it and warns)"


def test_the_schema_check_catches_a_broken_file(raw: dict[str, Any]) -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    broken = json.loads(json.dumps(raw))
    broken["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["gpu_count"] = 1
    broken["services"]["postgres"]["healthcheck"]["intervall"] = "5s"
    assert len(list(validator.iter_errors(broken))) >= 2


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian's docker-compose is not installed")
def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IRNN_", "COMPOSE_", "DOCKER_"))}
    for profile in ([], ["--profile", "large"]):
        done = subprocess.run(
            ["docker-compose", "-f", str(COMPOSE), *profile, "config", "-q"],
            cwd=tmp_path,  # no .env from the working tree
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr


# -- services


def test_expected_services(services: dict[str, Any]) -> None:
    assert {"postgres", "migrate", "mlflow", "dashboard", "worker"} <= set(services)
    assert services["storage-proxy"]["profiles"] == ["large"]
    assert all("profiles" not in s for n, s in services.items() if n != "storage-proxy")


def test_published_ports_bind_to_localhost_by_default(raw: dict[str, Any], services: dict[str, Any]) -> None:
    published = 0
    for name, service in services.items():
        for port, raw_port in zip(service.get("ports", []), raw["services"][name].get("ports", []), strict=True):
            published += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
                continue
            parts = str(port).split(":")
            assert len(parts) == 3 and parts[0] == "127.0.0.1", f"{name}: port {port} is not bound to 127.0.0.1"
            assert str(raw_port).startswith("${IRNN_BIND:-127.0.0.1}:"), f"{name}: {raw_port} ignores IRNN_BIND"
    assert published >= 4
    # IRNN_BIND moves every one of them
    lan = interpolate(raw, {**SECRETS, "IRNN_BIND": "10.0.0.5"})["services"]
    assert all(str(p).startswith("10.0.0.5:") for s in lan.values() for p in s.get("ports", []))


def test_dependencies_name_existing_services_with_sound_conditions(services: dict[str, Any]) -> None:
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        items = depends.items() if isinstance(depends, dict) else ((d, {}) for d in depends)
        for dep, spec in items:
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert dep != name
            condition = spec.get("condition", "service_started")
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy; it has no healthcheck"
            if condition == "service_completed_successfully":
                assert services[dep].get("restart", "no") == "no", f"{dep} is one-shot: it must not restart"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("mlflow", "dashboard", "worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_postgres_has_a_healthcheck_a_volume_and_creates_the_three_databases_each_with_its_owner(
    compose: dict[str, Any],
) -> None:
    pg = compose["services"]["postgres"]
    assert pg["image"].startswith("postgres:15")
    assert "pg_isready" in " ".join(as_list(pg["healthcheck"]["test"]))
    mounts = {v.split(":")[1]: v.split(":")[0] for v in pg["volumes"]}
    data = mounts["/var/lib/postgresql/data"]
    assert data in compose["volumes"], "the data directory must be a named volume"
    inits = [(src, dst) for dst, src in mounts.items() if dst.startswith("/docker-entrypoint-initdb.d/")]
    assert len(inits) == 1 and (ROOT / inits[0][0]).resolve() == INIT_SCRIPT
    assert os.access(INIT_SCRIPT, os.X_OK)
    text = INIT_SCRIPT.read_text()
    loop = re.search(r"^for db in ([a-z_ ]+); do", text, re.M)
    assert loop and set(loop.group(1).split()) == DATABASES
    assert "CREATE DATABASE" in text and "WHERE NOT EXISTS" in text
    # one owner role per database, with no power beyond it, and no way into the other databases
    assert re.search(r"CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS", text)
    assert "CREATE DATABASE %I OWNER %I', :'db', :'db')" in text
    assert "REVOKE ALL ON DATABASE %I FROM PUBLIC" in text
    # the roles' password reaches psql through its environment (\getenv), not its command line
    assert "\\getenv password IRNN_PG_PASSWORD" in text and "-v password" not in text
    env = env_of(pg)
    assert env["POSTGRES_DB"] == "postgres", "POSTGRES_DB must not pre-create one of the init script's databases"
    assert env["POSTGRES_USER"] == "postgres" and env["POSTGRES_PASSWORD"] == SECRETS["IRNN_PG_ADMIN_PASSWORD"]
    assert env["IRNN_PG_PASSWORD"] == SECRETS["IRNN_PG_PASSWORD"], "the init script needs the roles' password"
    # every PostgreSQL URL of the file points at this service and one of those databases, as that
    # database's owner role (never the superuser)
    for name, service in compose["services"].items():
        for key, value in env_of(service).items():
            if value.startswith("postgresql"):
                url = urlsplit(value)
                assert (url.hostname, url.port) == ("postgres", 5432), f"{name}.{key}"
                db = url.path.lstrip("/")
                assert db in DATABASES, f"{name}.{key}"
                assert (url.username, url.password) == (db, SECRETS["IRNN_PG_PASSWORD"]), f"{name}.{key}"
                assert url.username != env["POSTGRES_USER"], f"{name}.{key} connects as the superuser"


def test_compose_refuses_to_start_without_the_passwords(raw: dict[str, Any]) -> None:
    for name in SECRETS:
        for unset in ({k: v for k, v in SECRETS.items() if k != name}, {**SECRETS, name: ""}):
            with pytest.raises(Refused, match=name):
                interpolate(raw, unset)
    for line in COMPOSE.read_text().splitlines():
        if "PASSWORD" in line and "${" in line and not line.lstrip().startswith("#"):
            assert re.search(r"\$\{IRNN_PG_(ADMIN_)?PASSWORD:\?set IRNN_PG_(ADMIN_)?PASSWORD", line), line


def test_init_script_is_valid_shell() -> None:
    assert subprocess.run(["sh", "-n", str(INIT_SCRIPT)], capture_output=True).returncode == 0


def test_worker_reserves_an_nvidia_gpu_has_replicas_and_time_to_checkpoint(
    raw: dict[str, Any], services: dict[str, Any]
) -> None:
    worker = services["worker"]
    assert raw["services"]["worker"]["deploy"]["replicas"] == "${IRNN_WORKERS:-1}"
    assert int(worker["deploy"]["replicas"]) == 1
    assert int(interpolate(raw, {**SECRETS, "IRNN_WORKERS": "4"})["services"]["worker"]["deploy"]["replicas"]) == 4
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"] and int(device["count"]) == 1
    assert as_list(worker["command"])[:3] == ["worker", "--device", "cuda:0"]
    # packing is a knob: one trial at a time unless IRNN_PACK says
    assert as_list(worker["command"])[3:] == ["--pack", "1"]
    packed = interpolate(raw, {**SECRETS, "IRNN_PACK": "16"})["services"]["worker"]
    assert as_list(packed["command"])[3:] == ["--pack", "16"]
    assert worker["restart"] in ("on-failure", "unless-stopped", "always")
    grace = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", worker["stop_grace_period"])
    assert grace and int(grace.group(1) or 0) * 60 + int(grace.group(2) or 0) >= 60
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"
    # replicas share the state volume, so a trial whose worker died resumes from its checkpoint
    assert any(v.endswith(":" + env_of(worker)["IRNN_SEARCH_HOME"]) for v in worker["volumes"])


def test_workers_reach_the_services_by_name(services: dict[str, Any]) -> None:
    mlflow = services["mlflow"]
    argv = as_list(mlflow["command"])
    port = argv[argv.index("--port") + 1]
    assert "--serve-artifacts" in argv, "workers upload artifacts through the server over HTTP"
    destination = argv[argv.index("--artifacts-destination") + 1]
    assert any(v.endswith(":" + destination) for v in mlflow["volumes"])
    for name in ("worker", "dashboard", "migrate"):
        env = env_of(services[name])
        assert env["IRNN_SEARCH_MLFLOW_URI"] == f"http://mlflow:{port}"
    allowed = env_of(mlflow)["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert f"mlflow:{port}" in allowed, "MLflow refuses Host headers it does not know (DNS-rebinding guard)"
    assert env_of(mlflow)["MLFLOW_BACKEND_STORE_URI"].endswith("@postgres:5432/mlflow")


def test_no_literal_secret_and_no_default_password(raw: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    assert "irnn-dev-password" not in text and "irnn-dev-password" not in ENV_EXAMPLE.read_text()
    for name, service in raw["services"].items():
        for key, value in env_of(service).items():
            if re.search(r"PASSWORD|SECRET|TOKEN", key):
                assert value.startswith("${"), f"{name}.{key} is a literal secret"
            if value.startswith("postgresql"):
                password = urlsplit(interpolate(value, {**SECRETS, "IRNN_PG_PASSWORD": "s3cret"})).password
                assert password == "s3cret", f"{name}.{key}: the password does not come from IRNN_PG_PASSWORD"
    dockerfile = DOCKERFILE.read_text()
    assert not re.search(r"^\s*(ENV|ARG)\b.*(PASSWORD|SECRET|TOKEN|postgresql)", dockerfile, re.M | re.I)
    ignore = DOCKERIGNORE.read_text().splitlines()
    assert "**" in ignore and not any(line.startswith("!") and ".env" in line for line in ignore), ".env stays out"


def test_every_variable_is_documented_with_its_default(raw: dict[str, Any]) -> None:
    documented = dict(
        line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if line and not line.startswith("#")
    )
    used = dict(variables(raw))
    assert set(used) == set(documented), "docker/env.example and docker-compose.yml name different variables"
    for name, default in used.items():
        if name in SECRETS:  # required: documented without a value, to be filled in
            assert default is None and documented[name] == "", name
            continue
        assert default is not None, f"${{{name}}} has no default"
        assert documented[name] == default, f"{name}: env.example says {documented[name]!r}, compose {default!r}"
    # the same default for a variable everywhere it appears
    for name, default in variables(raw):
        assert default == used[name], name


def test_irnn_search_variables_are_ones_the_settings_read(services: dict[str, Any]) -> None:
    from irnn_search.settings import PREFIX, Settings

    class Recording(dict[str, str]):
        read: set[str]

        def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
            self.read.add(key)
            return super().get(key, default)

    env = Recording()
    env.read = set()
    Settings.from_env(env)
    assert {"IRNN_SEARCH_STORAGE", "IRNN_SEARCH_DB", "IRNN_SEARCH_MLFLOW_URI"} <= env.read
    for name, service in services.items():
        values = env_of(service)
        for key in values:
            if key.startswith(PREFIX):
                assert key in env.read, (
                    f"{name}: {key} is not a setting (irnn_search.settings reads {sorted(env.read)})"
                )
        if "build" in service and name != "storage-proxy":
            Settings.from_env(values)  # valid values (THREADS an integer, ...)


def test_irnn_search_commands_exist_in_the_cli(services: dict[str, Any]) -> None:
    from typer.testing import CliRunner

    from irnn_search.cli import app

    runner = CliRunner()
    invocations = cli_invocations(services)
    assert {n for n, _ in invocations} >= {"migrate", "dashboard", "worker"}
    for name, argv in invocations:
        result = runner.invoke(app, [*argv, "--help"])
        assert result.exit_code == 0, f"{name}: `irnn-search {' '.join(argv)}` is not a valid command:\n{result.output}"
    # the check is real: an unknown subcommand or option fails
    assert runner.invoke(app, ["worker", "--gpu", "0", "--help"]).exit_code != 0
    assert runner.invoke(app, ["db", "migrate", "--help"]).exit_code != 0


def test_migrate_runs_our_optuna_and_mlflow_upgrades(services: dict[str, Any]) -> None:
    lines = script_lines(migrate_script(services))
    assert ["irnn-search", "db", "upgrade"] in lines
    assert ["OPTUNA_STORAGE=$IRNN_SEARCH_STORAGE", "optuna", "storage", "upgrade"] in lines
    assert any(line[:2] == ["python", "-c"] and "mlflow.db import upgrade" in line[2] for line in lines)
    env = env_of(services["migrate"])
    for argv in lines:
        for word in argv:
            for var in re.findall(r"\$\{?([A-Z_]+)", word):
                assert var in env, f"migrate uses ${var}, which its environment does not set"


def test_no_database_url_or_password_is_on_a_command_line(services: dict[str, Any]) -> None:
    """Every user of the host sees every process's argv (``ps``): URLs with passwords go by environment."""
    secret = re.compile(r"\$\{?(IRNN_SEARCH_(STORAGE|DB|MLFLOW_URI)|MLFLOW_BACKEND_STORE_URI|IRNN_PG_PASSWORD)\b")
    for argv in script_lines(migrate_script(services)):
        command = [w for w in itertools.dropwhile(lambda w: re.match(r"^[A-Z_]+=", w), argv)]
        assert not any(secret.search(w) for w in command), argv
    for name, service in services.items():
        for key in ("command", "entrypoint"):
            words = as_list(service.get(key)) if key != "command" or name != "migrate" else []
            assert not any(secret.search(str(w)) or "://" in str(w) for w in words), (name, key, words)


# -- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in (raw.strip() for raw in text.splitlines())
        if line and not line.startswith("#")
    ]


def test_dockerfile_entrypoint_user_signal_and_default_command() -> None:
    import tomllib

    from typer.testing import CliRunner

    from irnn_search.cli import app

    instr = dockerfile_instructions()
    last = {k: v for k, v in instr}
    assert json.loads(last["ENTRYPOINT"]) == IMAGE_ENTRYPOINT
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert IMAGE_ENTRYPOINT[0] in scripts
    cmd = json.loads(last["CMD"])
    assert CliRunner().invoke(app, [*cmd, "--help"]).exit_code == 0
    assert last["STOPSIGNAL"] == "SIGTERM"
    assert last["USER"] not in ("root", "0")
    assert [k for k, _ in instr].index("USER") > max(i for i, (k, _) in enumerate(instr) if k == "RUN" and "pip" in _)


def test_dockerfile_keeps_the_base_torch_and_installs_with_constraints(raw: dict[str, Any]) -> None:
    instr = dockerfile_instructions()
    base = next(v for k, v in instr if k == "ARG" and v.startswith("BASE_IMAGE="))
    default_base = base.split("=", 1)[1]
    assert re.fullmatch(r"pytorch/pytorch:[\d.]+-cuda[\d.]+-cudnn\d+-runtime", default_base)
    assert raw["x-irnn-image"]["build"]["args"]["BASE_IMAGE"] == "${IRNN_BASE_IMAGE:-" + default_base + "}"
    pip = " ".join(v for k, v in instr if k == "RUN" and "pip install" in v)
    install = pip[pip.index("pip install") :].split(";")[0].split()
    assert "-c" in install and "constraints.txt" in install
    assert "/tmp/torch-pin.txt" in install, "torch must be pinned to the base image's build"
    assert not any(w.startswith("torch") for w in install[2:]), "the image must not install torch itself"
    # the built wheel, not the source (-e): the wheel carries the specs and the Alembic scripts
    assert "-e" not in install and "/tmp/dist/irnn_search-*.whl" in install
    build = " ".join(v for k, v in instr if k == "RUN" and "pip wheel" in v)
    assert "--no-deps" in build and "IRNN_SEARCH_BUILD_REVISION=" in build
    copies = [v.split() for k, v in instr if k == "COPY"]
    assert ["migrations", "./migrations"] in copies and ["studies", "./studies"] in copies
    assert ["--from=wheel", "/dist", "/tmp/dist"] in copies
    assert "migrate import head" in pip, "the build checks that the installed tool finds its migrations"
    assert "cmp" in pip and "torch.version.cuda" in pip


def test_dockerfile_copies_only_what_dockerignore_lets_through(services: dict[str, Any]) -> None:
    keep = [line[1:].rstrip("/") for line in DOCKERIGNORE.read_text().splitlines() if line.startswith("!")]
    assert "**" in DOCKERIGNORE.read_text().splitlines(), "exclude everything, then re-include"
    instr = dockerfile_instructions()
    workdir = [v for k, v in instr if k == "WORKDIR"][-1]  # the final stage's
    for _, value in (i for i in instr if i[0] == "COPY" and not i[1].startswith("--from=")):
        *sources, _dest = value.split()
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: no such path"
            assert src in keep, f"COPY {src}: excluded by .dockerignore"
    # the proxy's entry point is where the image puts it
    proxy = as_list(services["storage-proxy"]["entrypoint"])
    assert proxy[0] == "python" and proxy[1] == f"{workdir}/docker/grpc_proxy.py"
    assert (ROOT / "docker" / "grpc_proxy.py").is_file()
    assert "grpcio" in " ".join(v for k, v in instr if k == "RUN")


def test_storage_proxy_entry_uses_optunas_proxy() -> None:
    import optuna.storages

    assert callable(optuna.storages.run_grpc_proxy_server)
    text = (ROOT / "docker" / "grpc_proxy.py").read_text()
    assert "run_grpc_proxy_server" in text and "IRNN_SEARCH_STORAGE" in text
    done = subprocess.run([sys.executable, "-m", "py_compile", str(ROOT / "docker" / "grpc_proxy.py")])
    assert done.returncode == 0


def test_storage_proxy_listens_on_loopback_unless_told_and_compose_publishes_it_on_loopback(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import importlib.util

    import optuna.storages

    spec = importlib.util.spec_from_file_location("grpc_proxy", ROOT / "docker" / "grpc_proxy.py")
    assert spec is not None and spec.loader is not None
    proxy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(proxy)
    seen: list[str] = []
    monkeypatch.setattr(optuna.storages, "run_grpc_proxy_server", lambda storage, host, port: seen.append(host))
    monkeypatch.setenv("IRNN_SEARCH_STORAGE", f"sqlite:///{tmp_path / 'o.db'}")
    monkeypatch.delenv("IRNN_GRPC_PROXY_HOST", raising=False)
    proxy.main()
    monkeypatch.setenv("IRNN_GRPC_PROXY_HOST", "10.0.0.5")
    proxy.main()
    assert seen == ["127.0.0.1", "10.0.0.5"]
    ports = [str(p) for p in services["storage-proxy"]["ports"]]
    assert ports and all(p.startswith("127.0.0.1:") for p in ports)  # IRNN_BIND unset


# -- native rehearsal of the migrate service


@pytest.mark.postgres
def test_migrate_script_runs_natively_against_postgres(pg: Any, services: dict[str, Any], tmp_path: Path) -> None:
    """The migrate service's exact script on fresh databases, then again (idempotent)."""
    from tests.servers_fixtures import unique_name

    script = migrate_script(services)
    env = dict(os.environ)
    urls = {}
    for key, value in env_of(services["migrate"]).items():
        if value.startswith("postgresql"):
            db = urlsplit(value).path.lstrip("/")
            urls[db] = pg.create_database(unique_name(f"compose_{db}"))
            env[key] = urls[db]
        elif key == "IRNN_SEARCH_HOME":
            env[key] = str(tmp_path / "home")
        else:
            env[key] = value
    assert set(urls) == DATABASES
    env.pop("IRNN_SEARCH_MLFLOW_URI", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # irnn-search, optuna, mlflow
    for attempt in ("fresh", "again"):
        done = subprocess.run(
            ["/bin/sh", "-ec", script], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
        )
        assert done.returncode == 0, f"migrate ({attempt}) failed:\n{done.stdout}\n{done.stderr}"

    import optuna
    import sqlalchemy as sa

    from irnn_search.db.migrate import current, head

    assert current(urls["irnn"]) == head()
    storage = optuna.storages.RDBStorage(urls["optuna"])  # raises if the schema is not current
    assert storage.get_current_version() == storage.get_head_version()
    engine = sa.create_engine(urls["mlflow"])
    try:
        with engine.connect() as conn:
            assert sa.inspect(conn).has_table("experiments")
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()
        storage.remove_session()
        storage.engine.dispose()


@pytest.fixture(scope="module")
def init_cluster() -> Iterator[Any]:
    """A PostgreSQL cluster of its own, with the image's superuser name (``postgres``): the init
    script creates cluster-wide roles, which must not touch the shared test server's."""
    from irnn_search.dev.servers import Postgres, ServerError, find_postgres_bindir, reachable_tempdir

    try:
        find_postgres_bindir()
    except ServerError as exc:
        pytest.skip(str(exc))
    folder = reachable_tempdir("irnn-test-init-")
    server = Postgres(folder / "pg", user="postgres", fsync=False)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.postgres
def test_init_script_run_as_the_image_runs_it_gives_each_database_an_owner_with_no_other_rights(
    init_cluster: Any,
) -> None:
    """The script the postgres image runs on an empty volume, run for real (twice: it is
    idempotent), then each role used the way its service uses it."""
    from urllib.parse import quote

    import optuna
    import psycopg

    from irnn_search.db.migrate import current, head, upgrade
    from irnn_search.dev.servers import HOST

    server = init_cluster
    password = "roles s3cret 'with' \"quotes\""  # %L quoting, and psql's \getenv, not a command line
    env = {
        "PATH": f"{server.bindir}:{os.environ['PATH']}",
        "POSTGRES_USER": server.user,  # as the image's entrypoint sets them
        "PGHOST": HOST,
        "PGPORT": str(server.port),
        "PGPASSWORD": server.password,
    }
    refused = subprocess.run(["sh", str(INIT_SCRIPT)], env=env, capture_output=True, text=True)
    assert refused.returncode != 0 and "set IRNN_PG_PASSWORD" in refused.stderr
    for _ in range(2):
        done = subprocess.run(
            ["sh", str(INIT_SCRIPT)], env={**env, "IRNN_PG_PASSWORD": password}, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        assert password not in done.stdout + done.stderr

    def connect(user: str, db: str, secret: str = password) -> Any:
        return psycopg.connect(host=HOST, port=server.port, user=user, password=secret, dbname=db, autocommit=True)

    with connect(server.user, "postgres", server.password) as admin:
        roles = admin.execute(
            "SELECT rolname, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, rolcanlogin "
            "FROM pg_roles WHERE rolname = ANY(%s)",
            (sorted(DATABASES),),
        ).fetchall()
        owners = admin.execute(
            "SELECT datname, pg_get_userbyid(datdba) FROM pg_database WHERE datname = ANY(%s)", (sorted(DATABASES),)
        ).fetchall()
    assert sorted(roles) == sorted((db, False, False, False, False, False, True) for db in DATABASES)
    assert dict(owners) == {db: db for db in DATABASES}
    for db in DATABASES:
        with connect(db, db) as own:  # the owner may create its tables
            own.execute("CREATE TABLE IF NOT EXISTS probe (x int)")
            own.execute("DROP TABLE probe")
        for other in DATABASES - {db}:
            with pytest.raises(psycopg.OperationalError, match="permission denied"):
                connect(db, other).close()
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            connect(db, db, "wrong").close()

    # what the compose services then do with them: our migrations, and Optuna creating its schema
    def sa_url(db: str) -> str:
        return f"postgresql+psycopg://{db}:{quote(password, safe='')}@{HOST}:{server.port}/{db}"

    upgrade(sa_url("irnn"))
    assert current(sa_url("irnn")) == head()
    optuna.create_study(study_name="init-probe", storage=sa_url("optuna"))
    assert optuna.get_all_study_names(sa_url("optuna")) == ["init-probe"]
