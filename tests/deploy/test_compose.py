"""Static checks of the deployment files; no Docker engine needed.

Covers docker-compose.yml, Dockerfile, .dockerignore, .env.example,
deploy/nginx/nginx.conf and the monitoring wiring (deploy/prometheus,
deploy/grafana), and the properties that make the stack work: the services are
scalable, start in the right order, read consistent settings, are reachable
through nginx, and every replica is scraped by Prometheus. (The content of the
alert rules and of the dashboard is tested in tests/ops.)

``compose-spec.json`` beside this file is the Compose Specification JSON
schema as vendored by the PyPI package check-jsonschema 0.39.0
(``check_jsonschema/builtin_schemas/vendor/compose-spec.json``, sha256
d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64). It comes
from the compose-spec project under the Apache License 2.0, a copy of which
is in ``LICENSE.compose-spec``. To refresh it, copy the file from a newer
check-jsonschema wheel.
"""

from __future__ import annotations

import functools
import importlib.util
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
from pydantic import BaseModel

from krolik.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"
COMPOSE_SCHEMA = HERE / "compose-spec.json"

NGINX_CONF_TARGET = "/etc/nginx/conf.d/default.conf"
API_PORT = 8000
PROMETHEUS_PORT = 9090
GRAFANA_PORT = 3000
ALERTMANAGER_PORT = 9093
ALERTMANAGER_DIR = ROOT / "deploy" / "alertmanager"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
GRAFANA_DIR = ROOT / "deploy" / "grafana"

REQUIRED_SERVICES = {
    "db",
    "rabbitmq",
    "migrate",
    "api",
    "worker",
    "nginx",
    "prometheus",
    "alertmanager",
    "grafana",
}
APP_SERVICES = {"migrate", "api", "worker"}  # the services that run the krolik image
SCALABLE_SERVICES = ("api", "worker")

HEALTHY = "service_healthy"
COMPLETED = "service_completed_successfully"
EXPECTED_DEPENDS_ON: dict[str, dict[str, str]] = {
    "migrate": {"db": HEALTHY},
    "api": {"db": HEALTHY, "rabbitmq": HEALTHY, "migrate": COMPLETED},
    "worker": {"db": HEALTHY, "rabbitmq": HEALTHY, "migrate": COMPLETED},
    "nginx": {"api": HEALTHY},
    "grafana": {"prometheus": HEALTHY},
}

SHARED_APP_ENV = ("APP__DB__URL", "APP__RABBITMQ__URL", "APP__DEBUG")

# Values the seed (and a fresh `cp .env.example .env`) rely on.
ENV_EXAMPLE_SEED = {
    "APP__DEBUG": "true",
    "APP__DB__URL": "postgresql+asyncpg://krolik:krolik@db:5432/krolik",
    "APP__RABBITMQ__URL": "amqp://guest:guest@rabbitmq:5672/",
    "APP__RABBITMQ__QUEUE_NAME": "task_queue",
    "APP__RABBITMQ__EXCHANGE_NAME": "task_exchange",
    "APP__RABBITMQ__ROUTING_KEY": "task.new",
    "APP__RABBITMQ__PREFETCH_COUNT": "5",
    "APP__RABBITMQ__QUEUE_TYPE": "quorum",
    "APP__WORKER__CONCURRENCY": "8",
    "APP__WORKER__LEASE_SECONDS": "30",
    "APP__WORKER__HEARTBEAT_SECONDS": "10",
    "APP__WORKER__SHUTDOWN_GRACE_SECONDS": "30",
    "APP__API__MAX_PAYLOAD_BYTES": "1048576",
    "APP__RELAY__ENABLED": "true",
}
ENV_EXAMPLE_COMPOSE_VARS = (
    "POSTGRES_DB",
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "RABBITMQ_USER",
    "RABBITMQ_PASSWORD",
)
APP_SECTIONS = {
    name.upper()
    for name, field in Settings.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
}


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


@functools.cache
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "docker-compose.yml must be a mapping"
    return data


def services() -> dict[str, dict[str, Any]]:
    svcs = compose().get("services")
    assert isinstance(svcs, dict), "docker-compose.yml has no services mapping"
    return svcs


def service(name: str) -> dict[str, Any]:
    svcs = services()
    assert name in svcs, f"service {name!r} missing from docker-compose.yml"
    return svcs[name]


# Compose interpolation: $$ (literal $), ${VAR}, ${VAR<op><arg>}, $VAR.
INTERPOLATION_RE = re.compile(
    r"\$\$"
    r"|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<invalid>\$)"
)


def iter_strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, Mapping):
        for value in node.values():
            yield from iter_strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from iter_strings(item)


def interpolations(text: str) -> Iterator[tuple[str, str | None]]:
    """Yield (variable, operator or None) for every interpolation in ``text``."""
    for match in INTERPOLATION_RE.finditer(text):
        if match.group("invalid"):
            pytest.fail(f"invalid interpolation in {text!r}")
        name = match.group("braced") or match.group("bare")
        if name:
            yield name, match.group("op")


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Resolve ``text`` the way `docker compose` does (unset without default: error)."""

    def repl(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        if match.group("invalid"):
            pytest.fail(f"invalid interpolation in {text!r}")
        name = match.group("braced") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        value = env.get(name)
        if op in (":-", "-"):
            if value is None or (op == ":-" and value == ""):
                return interpolate(arg, env)
            return value
        if op in (":+", "+"):
            use_alt = value is not None and (op == "+" or value != "")
            return interpolate(arg, env) if use_alt else ""
        if value is None or (op == ":?" and value == ""):
            msg = f"${{{name}}} is unset and has no default (in {text!r})"
            raise KeyError(msg)
        return value

    return INTERPOLATION_RE.sub(repl, text)


def resolved(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, Mapping):
        return {key: resolved(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [resolved(item, env) for item in node]
    return node


ENV_LINE_RE = re.compile(r"^(?P<comment>#\s*)?(?P<key>[A-Z][A-Z0-9_]*)=(?P<value>.*)$")


def env_example_lines() -> list[tuple[str, str, bool]]:
    """(key, value, active) for every `KEY=value` line, commented out or not."""
    out = []
    for raw in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = ENV_LINE_RE.match(raw.strip())
        if match:
            out.append((match["key"], match["value"], match["comment"] is None))
    return out


def env_example() -> dict[str, str]:
    """The settings `.env.example` actually sets (as compose would read them)."""
    return {key: value for key, value, active in env_example_lines() if active}


def env_example_documented() -> set[str]:
    return {key for key, _, _ in env_example_lines()}


def depends_on(svc: Mapping[str, Any]) -> dict[str, str]:
    deps = svc.get("depends_on", {})
    if isinstance(deps, list):  # short syntax means service_started
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def command_argv(svc: Mapping[str, Any]) -> list[str]:
    cmd = svc.get("command")
    assert cmd, "service has no command"
    return shlex.split(cmd) if isinstance(cmd, str) else [str(part) for part in cmd]


def healthcheck_text(svc: Mapping[str, Any]) -> str:
    check = svc.get("healthcheck") or {}
    assert not check.get("disable"), "healthcheck is disabled"
    test = check.get("test")
    assert test, "service has no healthcheck test"
    if isinstance(test, str):
        return test
    assert test[0] in ("CMD", "CMD-SHELL"), f"healthcheck must start with CMD/CMD-SHELL: {test}"
    return " ".join(test[1:])


DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")
DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_seconds(text: str) -> float:
    text = str(text)
    assert re.fullmatch(rf"(?:{DURATION_RE.pattern})+", text), f"bad duration {text!r}"
    return sum(float(n) * DURATION_UNITS[unit] for n, unit in DURATION_RE.findall(text))


def volume_mounts(svc: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(source, target) for each volume of a service, short or long syntax."""
    mounts = []
    for vol in svc.get("volumes", []):
        if isinstance(vol, str):
            source, _, rest = vol.partition(":")
            mounts.append((source, rest.split(":")[0]))
        else:
            mounts.append((vol.get("source", ""), vol["target"]))
    return mounts


def build_context(svc: Mapping[str, Any]) -> tuple[Path, str]:
    build = svc["build"]
    if isinstance(build, str):
        return (ROOT / build).resolve(), "Dockerfile"
    return (ROOT / build.get("context", ".")).resolve(), build.get("dockerfile", "Dockerfile")


# --- a small nginx config reader ---------------------------------------------

NGINX_TOKEN_RE = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|[{};]|[^\s{};"\']+')


def nginx_parse(text: str) -> list[dict[str, Any]]:
    """Parse into [{"name", "args", "block"}] (block is None or a list)."""
    text = "\n".join(re.sub(r"(^|\s)#.*$", "", line) for line in text.splitlines())
    tokens = NGINX_TOKEN_RE.findall(text)
    stack: list[list[dict[str, Any]]] = [[]]
    words: list[str] = []
    for token in tokens:
        if token == ";":
            assert words, "empty nginx statement"
            stack[-1].append({"name": words[0], "args": words[1:], "block": None})
            words = []
        elif token == "{":
            assert words, "nginx block without a name"
            block: list[dict[str, Any]] = []
            stack[-1].append({"name": words[0], "args": words[1:], "block": block})
            stack.append(block)
            words = []
        elif token == "}":
            assert not words, f"nginx statement without ';': {words}"
            assert len(stack) > 1, "unbalanced '}' in nginx config"
            stack.pop()
        else:
            words.append(token.strip("\"'"))
    assert not words, f"nginx statement without ';': {words}"
    assert len(stack) == 1, "unclosed '{' in nginx config"
    return stack[0]


def nginx_walk(nodes: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for node in nodes:
        yield node
        if node["block"] is not None:
            yield from nginx_walk(node["block"])


def nginx_directives(nodes: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [node for node in nginx_walk(nodes) if node["name"] == name]


def nginx_conf_path() -> Path:
    for source, target in volume_mounts(service("nginx")):
        if target == NGINX_CONF_TARGET:
            return (ROOT / source).resolve()
    pytest.fail(f"nginx service does not mount a config at {NGINX_CONF_TARGET}")


def nginx_conf() -> list[dict[str, Any]]:
    return nginx_parse(nginx_conf_path().read_text(encoding="utf-8"))


def nginx_size_bytes(text: str) -> int:
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", text)
    assert match, f"bad nginx size {text!r}"
    return int(match[1]) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match[2].lower()]


# --- Dockerfile reader --------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            instr, _, args = full.partition(" ")
            out.append((instr.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a line continuation"
    return out


def exec_form(args: str) -> list[str]:
    """CMD/ENTRYPOINT must be JSON arrays, so krolik is PID 1 and receives SIGTERM."""
    try:
        argv = json.loads(args)
    except json.JSONDecodeError:
        argv = None
    assert isinstance(argv, list), f"use the exec (JSON array) form, not {args!r}"
    return argv


def dockerfile_final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (instr, _) in enumerate(instructions) if instr == "FROM")
    return instructions[last_from:]


# --------------------------------------------------------------------------
# docker-compose.yml
# --------------------------------------------------------------------------


def test_compose_has_no_obsolete_version_key() -> None:
    assert "version" not in compose(), "the Compose spec has no top-level `version:`; drop it"


def test_required_services_exist() -> None:
    missing = REQUIRED_SERVICES - services().keys()
    assert not missing, f"services missing from docker-compose.yml: {sorted(missing)}"


@pytest.mark.parametrize(
    ("name", "image"),
    [
        ("db", "postgres:16-alpine"),
        ("rabbitmq", "rabbitmq:4.2-management-alpine"),
        ("nginx", "nginx:1.27-alpine"),
        ("prometheus", "prom/prometheus:v2.55.1"),
        ("grafana", "grafana/grafana:11.3.1"),
        ("alertmanager", "prom/alertmanager:v0.27.0"),
    ],
)
def test_third_party_images_are_pinned(name: str, image: str) -> None:
    assert service(name).get("image") == image


@pytest.mark.parametrize("name", SCALABLE_SERVICES)
def test_scalable_services_have_no_fixed_name_or_host_port(name: str) -> None:
    svc = service(name)
    # Any of these makes `docker compose up --scale NAME=3` fail or clash.
    assert "container_name" not in svc, f"{name}: container_name prevents --scale"
    assert "hostname" not in svc, f"{name}: a fixed hostname would be shared by all replicas"
    assert "ports" not in svc, f"{name}: published ports clash between replicas (nginx fronts it)"


def test_nginx_is_the_only_published_entry_point_for_the_api() -> None:
    ports = resolved(service("nginx").get("ports", []), {})
    assert ports == [f"{API_PORT}:80"], ports
    assert "${API_PORT:-8000}:80" in service("nginx")["ports"]


@pytest.mark.parametrize("name", ["db", "rabbitmq", "prometheus", "alertmanager", "grafana"])
def test_infrastructure_ports_bind_to_loopback(name: str) -> None:
    for port in resolved(service(name).get("ports", []), {}):
        assert str(port).startswith("127.0.0.1:"), f"{name}: {port} exposes default credentials"


@pytest.mark.parametrize("name", sorted(EXPECTED_DEPENDS_ON))
def test_depends_on_conditions(name: str) -> None:
    assert depends_on(service(name)) == EXPECTED_DEPENDS_ON[name]


def test_depends_on_targets_can_satisfy_their_condition() -> None:
    for name, svc in services().items():
        for dep, condition in depends_on(svc).items():
            target = service(dep)
            if condition == HEALTHY:
                assert healthcheck_text(target), f"{name} waits for {dep} to be healthy"
            if condition == COMPLETED:
                # A restart policy would re-run a one-shot job forever.
                assert target.get("restart") == "no", (
                    f'{dep} must be a one-shot job (restart: "no")'
                )


def test_db_healthcheck_uses_pg_isready_for_user_and_database() -> None:
    check = healthcheck_text(service("db"))
    assert "pg_isready" in check
    assert re.search(r"-U\s+\S*POSTGRES_USER", check), check
    assert re.search(r"-d\s+\S*POSTGRES_DB", check), check
    # `$${VAR}` defers to the container's environment, which must define them.
    for name, _ in interpolations(check.replace("$$", "$")):
        assert name in service("db")["environment"], f"{name} not set in the db container"


def test_rabbitmq_healthcheck_pings_the_node() -> None:
    check = healthcheck_text(service("rabbitmq"))
    assert re.search(r"rabbitmq-diagnostics\s+(-q\s+)?ping", check), check


def test_api_healthcheck_uses_python_against_the_health_endpoint() -> None:
    check = healthcheck_text(service("api"))
    assert check.split()[0] in ("python", "python3"), "the image has no curl/wget; use python"
    assert "urllib.request.urlopen" in check
    assert f"http://127.0.0.1:{API_PORT}/health" in check


def test_build_services_share_one_context_with_a_dockerfile() -> None:
    builders = {name: svc for name, svc in services().items() if "build" in svc}
    assert builders.keys() == APP_SERVICES
    contexts = {build_context(svc) for svc in builders.values()}
    assert len(contexts) == 1, f"services build from different contexts: {contexts}"
    ((context, dockerfile),) = contexts
    assert context == ROOT
    assert (context / dockerfile).is_file()


@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_app_services_get_shared_env_and_optional_env_file(name: str) -> None:
    svc = service(name)
    env = svc.get("environment")
    assert isinstance(env, dict), f"{name}: environment must be the shared mapping"
    assert set(SHARED_APP_ENV) <= env.keys()
    assert env == compose()["x-krolik-env"], f"{name}: environment differs from x-krolik-env"
    env_files = svc.get("env_file")
    assert isinstance(env_files, list), f"{name}: env_file must use the long syntax"
    assert {"path": ".env", "required": False} in env_files, f"{name}: .env must be optional"


@pytest.mark.parametrize(
    ("name", "argv"),
    [
        ("migrate", ["krolik", "migrate"]),
        ("api", ["krolik", "api", "--host", "0.0.0.0", "--port", str(API_PORT)]),
        ("worker", ["krolik", "worker", "--concurrency", "8", "--metrics-port", "9100"]),
    ],
)
def test_app_service_commands(name: str, argv: list[str]) -> None:
    assert command_argv(service(name)) == argv


def test_restart_policies() -> None:
    assert service("migrate").get("restart") == "no"  # quoted: a bare `no` is YAML false
    for name in ("db", "rabbitmq", "api", "worker", "nginx", "prometheus", "grafana"):
        assert service(name).get("restart") == "unless-stopped", name


def test_worker_stop_grace_period_exceeds_its_drain_time() -> None:
    grace = duration_seconds(service("worker").get("stop_grace_period", "10s"))
    drain = float(env_example()["APP__WORKER__SHUTDOWN_GRACE_SECONDS"])
    assert grace > drain, f"stop_grace_period {grace}s must exceed the {drain}s drain (SIGKILL)"


@pytest.mark.parametrize(
    ("name", "data_dir"),
    [
        ("db", "/var/lib/postgresql/data"),
        ("rabbitmq", "/var/lib/rabbitmq"),
        ("prometheus", "/prometheus"),
        ("grafana", "/var/lib/grafana"),
    ],
)
def test_stateful_services_use_declared_named_volumes(name: str, data_dir: str) -> None:
    declared = (compose().get("volumes") or {}).keys()
    mounts = {target: source for source, target in volume_mounts(service(name))}
    assert data_dir in mounts, f"{name}: {data_dir} is not on a volume"
    assert mounts[data_dir] in declared, f"{name}: {mounts[data_dir]!r} is not a named volume"


def test_rabbitmq_hostname_is_fixed_so_its_data_survives_recreation() -> None:
    # RabbitMQ stores data under the node name rabbit@<hostname>.
    assert service("rabbitmq").get("hostname")


def test_interpolations_have_defaults_or_are_documented_credentials() -> None:
    example = env_example()
    problems = []
    for text in iter_strings(compose()):
        for name, op in interpolations(text):
            has_default = op in (":-", "-")
            credential = name.startswith(("POSTGRES_", "RABBITMQ_")) and name in example
            if not (has_default or credential):
                problems.append(f"${{{name}}} in {text!r}")
    assert not problems, f"variables without a default: {problems}"


def test_interpolated_variables_are_documented_in_env_example() -> None:
    used = {name for text in iter_strings(compose()) for name, _ in interpolations(text)}
    undocumented = used - env_example_documented()
    assert not undocumented, f"document these in .env.example: {sorted(undocumented)}"


def test_compose_resolves_without_any_env_to_the_env_example_urls() -> None:
    env = resolved(compose()["x-krolik-env"], {})
    example = env_example()
    assert env["APP__DB__URL"] == example["APP__DB__URL"]
    assert env["APP__RABBITMQ__URL"] == example["APP__RABBITMQ__URL"]
    assert env["APP__DEBUG"] == "false"


def test_app_urls_follow_the_credentials_of_the_db_and_broker() -> None:
    env = {
        "POSTGRES_DB": "orders",
        "POSTGRES_USER": "alice",
        "POSTGRES_PASSWORD": "s3cret",
        "RABBITMQ_USER": "bob",
        "RABBITMQ_PASSWORD": "hunter2",
    }
    app_env = resolved(compose()["x-krolik-env"], env)
    db_env = resolved(service("db")["environment"], env)
    mq_env = resolved(service("rabbitmq")["environment"], env)

    db_url = urlsplit(app_env["APP__DB__URL"])
    assert db_url.scheme == "postgresql+asyncpg"
    assert (db_url.hostname, db_url.port) == ("db", 5432)
    assert db_url.username == db_env["POSTGRES_USER"]
    assert db_url.password == db_env["POSTGRES_PASSWORD"]
    assert db_url.path == f"/{db_env['POSTGRES_DB']}"
    assert db_env["POSTGRES_USER"] == "alice"

    mq_url = urlsplit(app_env["APP__RABBITMQ__URL"])
    assert mq_url.scheme == "amqp"
    assert (mq_url.hostname, mq_url.port) == ("rabbitmq", 5672)
    assert mq_url.username == mq_env["RABBITMQ_DEFAULT_USER"]
    assert mq_url.password == mq_env["RABBITMQ_DEFAULT_PASS"]
    assert mq_env["RABBITMQ_DEFAULT_USER"] == "bob"


def test_compose_validates_against_the_compose_spec_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)

    errors = sorted(validator.iter_errors(compose()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)

    # The schema must actually constrain services (guards against a hollow schema file).
    broken = json.loads(json.dumps(compose()))
    broken["services"]["api"]["depends_on"]["db"]["condition"] = "service_ready"
    broken["services"]["worker"]["no_such_key"] = 1
    assert len(list(validator.iter_errors(broken))) >= 2


def compose_v2_command() -> list[str] | None:
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for cmd in candidates:
        try:
            out = subprocess.run(
                [*cmd, "version", "--short"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and re.match(r"v?[2-9]\.", out.stdout.strip()):
            return cmd
    return None


def test_docker_compose_config_accepts_the_file() -> None:
    cmd = compose_v2_command()
    if cmd is None:
        pytest.skip("Docker Compose v2 is not installed")
    result = subprocess.run(
        [*cmd, "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------
# deploy/nginx/nginx.conf
# --------------------------------------------------------------------------


def test_nginx_config_mounted_from_the_repo_exists() -> None:
    path = nginx_conf_path()
    assert path.is_file(), f"{path} (mounted into nginx) does not exist"
    assert path.is_relative_to(ROOT)
    assert (ROOT / "deploy/nginx/nginx.conf").resolve() == path


def test_nginx_proxies_to_the_api_service_port() -> None:
    conf = nginx_conf()
    variables = {node["args"][0]: node["args"][1] for node in nginx_directives(conf, "set")}
    targets = []
    for node in nginx_directives(conf, "proxy_pass"):
        (target,) = node["args"]
        targets.append(variables.get(target, target))
    assert targets, "nginx config has no proxy_pass"
    for target in targets:
        url = urlsplit(target)
        assert (url.scheme, url.hostname, url.port) == ("http", "api", API_PORT), target
    api_argv = command_argv(service("api"))
    assert api_argv[api_argv.index("--port") + 1] == str(API_PORT)


def test_nginx_re_resolves_api_replicas_through_docker_dns() -> None:
    conf = nginx_conf()
    resolvers = nginx_directives(conf, "resolver")
    assert resolvers, "no resolver: nginx would never see replicas added by --scale"
    assert resolvers[0]["args"][0] == "127.0.0.11"
    assert any(arg.startswith("valid=") for arg in resolvers[0]["args"])
    # A literal proxy_pass host (or a static upstream server) is resolved once, at start-up.
    for node in nginx_directives(conf, "proxy_pass"):
        assert node["args"][0].startswith("$"), "proxy_pass must use a variable to re-resolve `api`"
    for node in nginx_directives(conf, "server"):
        if node["block"] is None and node["args"][0].startswith("api"):
            assert "resolve" in node["args"], "static upstream `server api` ignores new replicas"


def test_nginx_forwards_request_id_and_client_headers() -> None:
    conf = nginx_conf()
    headers = {
        node["args"][0].lower(): node["args"][1]
        for node in nginx_directives(conf, "proxy_set_header")
    }
    assert headers.get("host") == "$host"
    assert headers.get("x-forwarded-for") == "$proxy_add_x_forwarded_for"
    request_id = headers.get("x-request-id")
    assert request_id, "X-Request-ID is not passed to the api"
    if request_id != "$request_id":  # mapped: keep the client's id, else nginx's
        maps = [node for node in nginx_directives(conf, "map") if node["args"][1] == request_id]
        assert maps, f"{request_id} is neither $request_id nor set by a map"
        values = {entry["name"]: entry["args"] for entry in maps[0]["block"]}
        assert values.get("") == ["$request_id"] or values.get("default") == ["$request_id"], values


def test_nginx_limits_body_size_above_the_api_payload_limit() -> None:
    sizes = nginx_directives(nginx_conf(), "client_max_body_size")
    assert [node["args"] for node in sizes] == [["2m"]]
    payload_limit = int(env_example()["APP__API__MAX_PAYLOAD_BYTES"])
    assert nginx_size_bytes(sizes[0]["args"][0]) > payload_limit


@pytest.mark.parametrize(
    "directive", ["proxy_connect_timeout", "proxy_send_timeout", "proxy_read_timeout"]
)
def test_nginx_sets_proxy_timeouts(directive: str) -> None:
    nodes = nginx_directives(nginx_conf(), directive)
    assert len(nodes) == 1, f"expected one {directive}, found {len(nodes)}"
    assert 0 < duration_seconds(nodes[0]["args"][0]) <= 300


# --------------------------------------------------------------------------
# monitoring: worker metrics port, prometheus, grafana
# --------------------------------------------------------------------------


def option_value(argv: list[str], option: str) -> str:
    """The value of ``--option VALUE`` or ``--option=VALUE`` in a command line."""
    for i, arg in enumerate(argv):
        if arg == option:
            assert i + 1 < len(argv), f"{option} has no value in {argv}"
            return argv[i + 1]
        if arg.startswith(f"{option}="):
            return arg.partition("=")[2]
    pytest.fail(f"{option} is not set in {argv}")


def worker_metrics_port() -> int:
    return int(option_value(command_argv(service("worker")), "--metrics-port"))


def host_path(name: str, container_path: str) -> Path:
    """The file in the repository that a bind mount of service ``name`` shows at
    ``container_path`` (the deepest mount that contains it)."""
    best: tuple[str, str] | None = None
    for source, target in volume_mounts(service(name)):
        target = target.rstrip("/")
        inside = container_path == target or container_path.startswith(f"{target}/")
        if inside and (best is None or len(target) > len(best[1])):
            best = (source, target)
    assert best is not None, f"{name}: nothing is mounted at {container_path}"
    source, target = best
    assert source.startswith("./"), f"{name}: {target} is not a bind mount of the repository"
    path = (ROOT / source / container_path[len(target) :].lstrip("/")).resolve()
    assert path.is_relative_to(ROOT), f"{name}: {source} is outside the repository"
    return path


def healthcheck_timeout_seconds(svc: Mapping[str, Any]) -> float:
    return duration_seconds(svc["healthcheck"].get("timeout", "30s"))


def urlopen_timeout(check: str) -> float:
    match = re.search(r"timeout\s*=\s*(\d+(?:\.\d+)?)", check)
    assert match, f"urlopen without a timeout would hang until Docker kills it: {check}"
    return float(match[1])


def prometheus_config() -> dict[str, Any]:
    argv = [str(arg) for arg in service("prometheus").get("command", [])]
    path = host_path("prometheus", option_value(argv, "--config.file"))
    assert path.is_file(), f"{path} (prometheus --config.file) does not exist"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def scrape_configs() -> dict[str, dict[str, Any]]:
    jobs = {job["job_name"]: job for job in prometheus_config().get("scrape_configs", [])}
    assert jobs, "prometheus.yml scrapes nothing"
    return jobs


def prometheus_rule_files() -> list[Path]:
    config_dir = host_path("prometheus", "/etc/prometheus/prometheus.yml").parent
    files = [config_dir / name for name in prometheus_config().get("rule_files", [])]
    assert files, "prometheus.yml loads no rule files"
    return files


def test_worker_serves_metrics_on_an_exposed_port() -> None:
    port = worker_metrics_port()
    assert str(port) in [str(p) for p in service("worker").get("expose", [])]
    assert "ports" not in service("worker"), "replicas would clash on a published port"


def test_worker_healthcheck_probes_readiness_on_the_metrics_port() -> None:
    worker = service("worker")
    check = healthcheck_text(worker)
    assert check.split()[0] in ("python", "python3"), "the image has no curl/wget; use python"
    assert "urllib.request.urlopen" in check
    assert f"http://127.0.0.1:{worker_metrics_port()}/health/ready" in check
    # /health/ready checks PostgreSQL then RabbitMQ, 3 s each at most.
    assert 6 < urlopen_timeout(check) < healthcheck_timeout_seconds(worker)
    start = duration_seconds(worker["healthcheck"].get("start_period", "0s"))
    assert start >= 15, "a worker retries its connections at start-up; give it time"


def test_api_healthcheck_answers_within_the_docker_timeout() -> None:
    api = service("api")
    assert urlopen_timeout(healthcheck_text(api)) < healthcheck_timeout_seconds(api)


def test_prometheus_mounts_its_config_and_rules_from_the_repository() -> None:
    config_dir = host_path("prometheus", "/etc/prometheus")
    assert config_dir == PROMETHEUS_DIR.resolve()
    for path in prometheus_rule_files():
        assert path.is_file(), f"rule file {path} (rule_files in prometheus.yml) does not exist"
        assert path.parent == config_dir, f"{path} is not in the mounted folder"
    assert read_only("prometheus", "/etc/prometheus")


def read_only(name: str, target: str) -> bool:
    for vol in service(name).get("volumes", []):
        if isinstance(vol, str):
            parts = vol.split(":")
            if parts[1] == target:
                return len(parts) > 2 and "ro" in parts[2].split(",")
        elif vol["target"] == target:
            return bool(vol.get("read_only"))
    pytest.fail(f"{name}: nothing is mounted at {target}")


def test_prometheus_sends_alerts_to_the_alertmanager_service() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text(encoding="utf-8"))
    targets = [
        target
        for manager in config["alerting"]["alertmanagers"]
        for static in manager["static_configs"]
        for target in static["targets"]
    ]
    assert targets == [f"alertmanager:{ALERTMANAGER_PORT}"]
    assert resolved(service("alertmanager")["ports"], {}) == [
        f"127.0.0.1:{ALERTMANAGER_PORT}:{ALERTMANAGER_PORT}"
    ]


def test_alertmanager_mounts_its_config_and_keeps_state_in_a_volume() -> None:
    assert host_path("alertmanager", "/etc/alertmanager") == ALERTMANAGER_DIR.resolve()
    assert read_only("alertmanager", "/etc/alertmanager")
    argv = [str(arg) for arg in service("alertmanager")["command"]]
    config = option_value(argv, "--config.file")
    assert config is not None
    assert (ALERTMANAGER_DIR / Path(config).name).is_file()
    assert option_value(argv, "--storage.path") == "/alertmanager"
    assert "alertmanager-data:/alertmanager" in service("alertmanager")["volumes"]
    assert "/-/ready" in healthcheck_text(service("alertmanager"))


def test_prometheus_keeps_data_in_the_declared_volume() -> None:
    argv = [str(arg) for arg in service("prometheus")["command"]]
    assert option_value(argv, "--storage.tsdb.path") == "/prometheus"


def test_monitoring_ports_resolve_to_loopback_defaults() -> None:
    assert resolved(service("prometheus")["ports"], {}) == [
        f"127.0.0.1:{PROMETHEUS_PORT}:{PROMETHEUS_PORT}"
    ]
    assert resolved(service("grafana")["ports"], {}) == [f"127.0.0.1:{GRAFANA_PORT}:{GRAFANA_PORT}"]


@pytest.mark.parametrize(
    ("job", "svc", "port"),
    [("krolik-api", "api", API_PORT), ("krolik-worker", "worker", None)],
)
def test_prometheus_scrapes_every_replica_through_docker_dns(
    job: str, svc: str, port: int | None
) -> None:
    jobs = scrape_configs()
    assert job in jobs, f"prometheus.yml has no job {job!r}"
    config = jobs[job]
    assert not config.get("static_configs"), f"{job}: a static target is one replica at a time"
    (discovery,) = config.get("dns_sd_configs", [None])
    assert discovery, f"{job}: use dns_sd_configs to find every replica"
    assert discovery["names"] == [svc]
    assert discovery.get("type") == "A"
    expected = port if port is not None else worker_metrics_port()
    assert discovery.get("port") == expected
    assert config.get("metrics_path", "/metrics") == "/metrics"
    if svc == "api":
        argv = command_argv(service("api"))
        assert option_value(argv, "--port") == str(expected)


def test_prometheus_scrapes_the_jobs_the_alerts_use() -> None:
    jobs = scrape_configs().keys()
    used: set[str] = set()
    for path in prometheus_rule_files():
        rules = yaml.safe_load(path.read_text(encoding="utf-8"))
        for group in rules["groups"]:
            for rule in group["rules"]:
                used |= set(re.findall(r'\bjob\s*=~?\s*"([^"]+)"', rule["expr"]))
    assert used, "the alerts name no job; KrolikApiDown/KrolikWorkerDown should"
    assert used <= jobs, f"alerts use jobs prometheus.yml does not scrape: {sorted(used - jobs)}"


def grafana_provisioning(kind: str) -> list[dict[str, Any]]:
    folder = host_path("grafana", f"/etc/grafana/provisioning/{kind}")
    assert folder == (GRAFANA_DIR / "provisioning" / kind).resolve()
    assert read_only("grafana", "/etc/grafana/provisioning")
    files = sorted(folder.glob("*.y*ml"))
    assert files, f"no provisioning file in {folder}"
    return [yaml.safe_load(path.read_text(encoding="utf-8")) for path in files]


def test_grafana_datasource_is_the_prometheus_service() -> None:
    datasources = [ds for doc in grafana_provisioning("datasources") for ds in doc["datasources"]]
    (prometheus,) = [ds for ds in datasources if ds["type"] == "prometheus"]
    url = urlsplit(prometheus["url"])
    assert (url.scheme, url.hostname, url.port) == ("http", "prometheus", PROMETHEUS_PORT)
    assert prometheus.get("uid"), "dashboards need a fixed datasource uid"
    assert prometheus.get("access", "proxy") == "proxy"


def test_grafana_dashboard_provider_reads_a_mounted_folder_with_dashboards() -> None:
    providers = [p for doc in grafana_provisioning("dashboards") for p in doc["providers"]]
    assert providers
    for provider in providers:
        assert provider.get("type", "file") == "file"
        folder = host_path("grafana", provider["options"]["path"])
        assert folder.is_dir(), f"{folder} (dashboard provider path) does not exist"
        dashboards = sorted(folder.glob("*.json"))
        assert dashboards, f"no dashboard JSON in {folder}"
        for path in dashboards:
            assert json.loads(path.read_text(encoding="utf-8"))["uid"]
    home = service("grafana")["environment"].get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert host_path("grafana", home).is_file(), f"home dashboard {home} is not mounted"


def test_grafana_admin_password_has_a_default_and_anonymous_users_only_view() -> None:
    raw = service("grafana")["environment"]
    assert "GRAFANA_ADMIN_PASSWORD" in raw["GF_SECURITY_ADMIN_PASSWORD"]
    env = resolved(raw, {})
    assert env["GF_SECURITY_ADMIN_PASSWORD"], "the admin password needs a default"
    assert resolved(raw, {"GRAFANA_ADMIN_PASSWORD": "s3cret"})["GF_SECURITY_ADMIN_PASSWORD"] == (
        "s3cret"
    )
    if str(env.get("GF_AUTH_ANONYMOUS_ENABLED", "false")).lower() == "true":
        assert env.get("GF_AUTH_ANONYMOUS_ORG_ROLE") == "Viewer"


# --------------------------------------------------------------------------
# Dockerfile and .dockerignore
# --------------------------------------------------------------------------


def test_dockerfile_uses_python_312_slim() -> None:
    froms = [args.split() for instr, args in dockerfile_instructions() if instr == "FROM"]
    assert froms, "Dockerfile has no FROM"
    stages: set[str] = set()
    for words in froms:
        assert words[0] == "python:3.12-slim" or words[0] in stages, words[0]
        if len(words) == 3 and words[1].upper() == "AS":
            stages.add(words[2])


def test_dockerfile_installs_the_project() -> None:
    runs = " ".join(args for instr, args in dockerfile_instructions() if instr == "RUN")
    assert re.search(r"pip install (?:[^&;|]* )?\.(?:\s|$)", runs), "no `pip install .`"


def test_dockerfile_default_command_runs_the_krolik_console_script() -> None:
    final = dockerfile_final_stage()
    entrypoints = [exec_form(args) for instr, args in final if instr == "ENTRYPOINT"]
    cmds = [exec_form(args) for instr, args in final if instr == "CMD"]
    assert cmds, "final stage has no CMD"
    cmd = cmds[-1]
    argv = (entrypoints[-1] if entrypoints else []) + cmd
    assert argv == ["krolik", "api", "--host", "0.0.0.0", "--port", str(API_PORT)]


def test_dockerfile_runs_as_non_root() -> None:
    users = [args.split(":")[0] for instr, args in dockerfile_final_stage() if instr == "USER"]
    assert users, "final stage never switches away from root"
    assert users[-1] not in ("root", "0")


def test_dockerfile_environment_and_port() -> None:
    final = dockerfile_final_stage()
    env = " ".join(args for instr, args in final if instr == "ENV")
    assert re.search(r"\bPYTHONUNBUFFERED=1\b", env)
    exposed = " ".join(args for instr, args in final if instr == "EXPOSE").split()
    assert str(API_PORT) in exposed
    # One image serves api, worker and migrate: an HTTP HEALTHCHECK would mark workers unhealthy.
    assert not [args for instr, args in final if instr == "HEALTHCHECK"]


def test_dockerignore_excludes_local_state_but_not_the_project() -> None:
    lines = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    required = {".venv", ".git", ".pytest_cache", ".mypy_cache", "*.sqlite3", ".env"}
    assert required <= lines, f"missing from .dockerignore: {sorted(required - lines)}"
    assert "__pycache__" in lines or "**/__pycache__" in lines
    for needed in ("pyproject.toml", "krolik", "README.md", "*", "**"):
        assert needed not in lines, f".dockerignore excludes {needed}, which `pip install .` needs"


# --------------------------------------------------------------------------
# .env.example
# --------------------------------------------------------------------------


def test_env_example_sets_seed_compatible_values() -> None:
    example = env_example()
    wrong = {
        key: example.get(key)
        for key, value in ENV_EXAMPLE_SEED.items()
        if example.get(key) != value
    }
    assert not wrong, f".env.example differs from the seed values: {wrong}"


def test_env_example_documents_compose_variables() -> None:
    missing = set(ENV_EXAMPLE_COMPOSE_VARS) - env_example().keys()
    assert not missing, sorted(missing)


def test_env_example_has_no_duplicate_keys() -> None:
    keys = [key for key, _, active in env_example_lines() if active]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    assert not duplicates, duplicates


def test_env_example_app_keys_use_double_underscore_nesting() -> None:
    part = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*")
    keys = sorted(key for key in env_example_documented() if key.startswith("APP"))
    assert keys
    for key in keys:
        assert key.startswith("APP__"), f"{key}: the prefix is APP__"
        parts = key.removeprefix("APP__").split("__")
        assert all(part.fullmatch(p) for p in parts), f"{key}: use exactly `__` between levels"
        assert len(parts) <= 2, f"{key}: settings nest at most APP__SECTION__FIELD"
        if len(parts) == 1:
            flat = [s for s in APP_SECTIONS if parts[0].startswith(f"{s}_")]
            assert not flat, f"{key}: nested settings are APP__{flat[0]}__..., not a single `_`"
        else:
            assert parts[0] in APP_SECTIONS, f"{key}: unknown settings section {parts[0]}"


def settings_env_names(settings_cls: type[Any]) -> dict[str, tuple[str, ...]]:
    """APP__... variable name -> attribute path, for every leaf setting."""
    config = settings_cls.model_config
    prefix, delimiter = config.get("env_prefix", ""), config.get("env_nested_delimiter")
    names: dict[str, tuple[str, ...]] = {}
    for field, info in settings_cls.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            assert delimiter, "nested settings need env_nested_delimiter"
            for sub in annotation.model_fields:
                names[f"{prefix}{field}{delimiter}{sub}".upper()] = (field, sub)
        else:
            names[f"{prefix}{field}".upper()] = (field,)
    return names


def settings_value(settings: Any, path: tuple[str, ...]) -> Any:
    for attr in path:
        settings = getattr(settings, attr)
    return settings


def setting_text(value: Any) -> str:
    """A loaded setting written the way .env.example writes it."""
    if hasattr(value, "get_secret_value"):
        value = value.get_secret_value()
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def test_env_example_matches_the_settings_model(monkeypatch: pytest.MonkeyPatch) -> None:
    settings_cls = pytest.importorskip("krolik.settings").Settings
    names = settings_env_names(settings_cls)
    documented = {key for key in env_example_documented() if key.startswith("APP__")}
    assert not names.keys() - documented, f"undocumented: {sorted(names.keys() - documented)}"
    assert not documented - names.keys(), f"not settings: {sorted(documented - names.keys())}"

    for key in [key for key in os.environ if key.upper().startswith("APP__")]:
        monkeypatch.delenv(key)
    defaults = settings_cls(_env_file=None)
    # The active lines load as a whole...
    loaded = settings_cls(_env_file=ENV_EXAMPLE)
    for key, value in env_example().items():
        if key in names:
            assert setting_text(settings_value(loaded, names[key])) == value, key
    # ...and every commented-out line really shows the default.
    for key, value, active in env_example_lines():
        if active or key not in names:
            continue
        with monkeypatch.context() as patched:
            patched.setenv(key, value)
            one = settings_cls(_env_file=None)
        path = names[key]
        assert settings_value(one, path) == settings_value(defaults, path), f"{key}={value}"


@pytest.mark.parametrize(
    ("subcommand", "options"),
    [
        ("api", ["--host", "--port"]),
        ("worker", ["--concurrency", "--metrics-port"]),
        ("migrate", []),
    ],
)
def test_compose_commands_exist_in_the_krolik_cli(subcommand: str, options: list[str]) -> None:
    script = Path(sys.executable).with_name("krolik")
    if not script.is_file() or importlib.util.find_spec("krolik.cli") is None:
        pytest.skip("the krolik console script / krolik.cli is not installed")
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    result = subprocess.run(
        [str(script), subcommand, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for option in options:
        assert option in result.stdout, f"`krolik {subcommand}` has no {option} option"
