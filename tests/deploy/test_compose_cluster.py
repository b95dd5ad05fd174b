"""Static checks of docker-compose.cluster.yml and its files; no Docker engine needed.

The scaled-out stack: three RabbitMQ nodes clustered by name, a PostgreSQL primary and a
streaming replica, PgBouncer in transaction mode, nginx in front of scaled APIs, scaled
workers. The checks: the file is valid Compose, every file it mounts or builds exists,
the services it scales can be scaled, the order of start-up can be met, and the
settings the Krolik containers get say what the cluster is (every RabbitMQ node, the
PgBouncer flag, the replica for reads), as Krolik's own settings model reads them.
"""

from __future__ import annotations

import configparser
import json
import subprocess
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import SecretStr

from krolik.settings import DatabaseSettings, RabbitMQSettings
from tests.deploy.test_compose import COMPOSE_SCHEMA, depends_on, healthcheck_text, resolved

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_FILE = ROOT / "docker-compose.cluster.yml"
RABBITMQ_NODES = ("rabbitmq-1", "rabbitmq-2", "rabbitmq-3")
APP_SERVICES = ("migrate", "api", "worker")


@cache
def cluster() -> dict[str, Any]:
    data = yaml.safe_load(CLUSTER_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    return cluster()["services"]


def app_env(name: str) -> dict[str, str]:
    return resolved(services()[name]["environment"], {})


def test_the_file_is_valid_compose() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(json.loads(COMPOSE_SCHEMA.read_text()))
    errors = sorted(validator.iter_errors(cluster()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_every_part_of_the_cluster_is_there() -> None:
    expected = {*RABBITMQ_NODES, "db-primary", "db-replica", "pgbouncer", "nginx", *APP_SERVICES}
    assert expected <= services().keys()


def test_mounted_and_built_files_exist() -> None:
    for name, svc in services().items():
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is missing"
        build = svc.get("build")
        if build:
            context = ROOT / build["context"]
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name


@pytest.mark.parametrize("name", ["api", "worker"])
def test_scaled_services_can_be_scaled(name: str) -> None:
    svc = services()[name]
    assert not {"container_name", "hostname", "ports"} & svc.keys(), name


def test_only_nginx_publishes_a_port() -> None:
    published = {name for name, svc in services().items() if svc.get("ports")}
    assert published == {"nginx"}


def test_start_up_order_can_be_met() -> None:
    for name, svc in services().items():
        for dep, condition in depends_on(svc).items():
            assert dep in services(), f"{name} waits for {dep}, which is not a service"
            if condition == "service_healthy":
                assert healthcheck_text(services()[dep]), f"{name} waits for {dep} healthy"
            if condition == "service_completed_successfully":
                assert services()[dep].get("restart") == "no", dep


def test_third_party_images_are_pinned() -> None:
    for name, svc in services().items():
        image = svc.get("image")
        if image:
            assert ":" in image, f"{name}: {image} has no tag"
            assert not image.endswith(":latest"), name


@pytest.mark.parametrize("name", ["api", "worker"])
def test_krolik_reaches_every_rabbitmq_node(name: str) -> None:
    env = app_env(name)
    settings = RabbitMQSettings(url=SecretStr(env["APP__RABBITMQ__URL"]), queue_type="quorum")
    hosts = [urlsplit(url).hostname for url in settings.node_urls]
    assert hosts == list(RABBITMQ_NODES)
    assert env["APP__RABBITMQ__QUEUE_TYPE"] == "quorum"


def test_the_rabbitmq_nodes_cluster_by_their_hostnames() -> None:
    conf = (ROOT / "deploy" / "rabbitmq" / "cluster.conf").read_text()
    listed = [line.split("=", 1)[1].strip() for line in conf.splitlines() if ".nodes." in line]
    assert listed == [f"rabbit@{services()[node]['hostname']}" for node in RABBITMQ_NODES]
    cookies = {
        services()[node]["environment"]["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"]
        for node in RABBITMQ_NODES
    }
    assert len(cookies) == 1, "the nodes must share one Erlang cookie"


@pytest.mark.parametrize("name", ["api", "worker"])
def test_krolik_writes_through_pgbouncer_and_reads_from_the_replica(name: str) -> None:
    env = app_env(name)
    db = DatabaseSettings(
        url=SecretStr(env["APP__DB__URL"]),
        pgbouncer=env["APP__DB__PGBOUNCER"],
        read_url=SecretStr(env["APP__DB__READ_URL"]),
    )
    assert db.pgbouncer is True
    assert urlsplit(db.dsn).hostname == "pgbouncer"
    assert db.read_dsn is not None
    assert urlsplit(db.read_dsn).hostname == "db-replica"


def test_migrations_go_straight_to_the_primary() -> None:
    assert urlsplit(app_env("migrate")["APP__DB__URL"]).hostname == "db-primary"


def test_pgbouncer_pools_transactions_in_front_of_the_primary() -> None:
    ini = configparser.ConfigParser()
    ini.read(ROOT / "deploy" / "pgbouncer" / "pgbouncer.ini")
    assert ini["pgbouncer"]["pool_mode"] == "transaction"
    assert "host=db-primary" in ini["databases"]["*"]
    assert ini["pgbouncer"]["listen_port"] == "6432"


def test_the_replica_clones_and_follows_the_primary() -> None:
    replica = services()["db-replica"]
    script_path = replica["entrypoint"][-1]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in replica["volumes"]}
    script = (ROOT / mounts[script_path]).read_text()
    assert "pg_basebackup -h db-primary" in script
    assert " -R " in script  # standby.signal and primary_conninfo
    init = (ROOT / "deploy" / "postgres" / "primary-init.sh").read_text()
    assert "replication" in init


@pytest.mark.parametrize(
    "script",
    [
        "deploy/postgres/primary-init.sh",
        "deploy/postgres/replica-entrypoint.sh",
        "deploy/pgbouncer/entrypoint.sh",
    ],
)
def test_shell_scripts_parse(script: str) -> None:
    done = subprocess.run(["sh", "-n", str(ROOT / script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
