from __future__ import annotations

import os

import pytest
from pydantic import SecretStr, ValidationError

from krolik.settings import DatabaseSettings, QueueType, Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key.upper().startswith("APP__"):
            monkeypatch.delenv(key)


def test_defaults():
    settings = Settings(_env_file=None)
    assert settings.debug is False
    assert settings.db.dsn == "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
    assert settings.rabbitmq.queue_name == "task_queue"
    assert settings.rabbitmq.exchange_name == "task_exchange"
    assert settings.rabbitmq.routing_key == "task.new"
    assert settings.rabbitmq.queue_type is QueueType.QUORUM
    assert settings.default_queue == "default"
    assert settings.worker.queues == ["default"]


def test_seed_environment_names_are_read(monkeypatch):
    monkeypatch.setenv("APP__DB__URL", "postgresql+asyncpg://app:pw@db:5432/tasks")
    monkeypatch.setenv("APP__RABBITMQ__URL", "amqp://user:pass@mq:5672/vhost")
    monkeypatch.setenv("APP__RABBITMQ__QUEUE_NAME", "jobs")
    monkeypatch.setenv("APP__RABBITMQ__PREFETCH_COUNT", "17")
    monkeypatch.setenv("APP__DEBUG", "true")
    monkeypatch.setenv("APP__WORKER__LEASE_SECONDS", "12.5")
    settings = Settings(_env_file=None)
    assert settings.db.dsn == "postgresql+asyncpg://app:pw@db:5432/tasks"
    assert settings.rabbitmq.dsn == "amqp://user:pass@mq:5672/vhost"
    assert settings.rabbitmq.queue_name == "jobs"
    assert settings.rabbitmq.prefetch_count == 17
    assert settings.debug is True
    assert settings.worker.lease_seconds == 12.5
    # sections not mentioned keep their defaults
    assert settings.rabbitmq.exchange_name == "task_exchange"
    assert settings.worker.concurrency == 8


def test_names_are_case_insensitive(monkeypatch):
    monkeypatch.setenv("app__rabbitmq__queue_name", "lower")
    assert Settings(_env_file=None).rabbitmq.queue_name == "lower"


def test_env_file_is_read(tmp_path, monkeypatch):
    env = tmp_path / "krolik.env"
    env.write_text("APP__RABBITMQ__QUEUE_NAME=from_file\nAPP__DEBUG=1\n")
    settings = Settings(_env_file=env)
    assert settings.rabbitmq.queue_name == "from_file"
    assert settings.debug is True
    monkeypatch.setenv("APP__RABBITMQ__QUEUE_NAME", "from_env")
    assert Settings(_env_file=env).rabbitmq.queue_name == "from_env"


def test_invalid_values_are_rejected(monkeypatch):
    monkeypatch.setenv("APP__RABBITMQ__PREFETCH_COUNT", "0")
    with pytest.raises(ValidationError):
        Settings(_env_file=None)


def test_invalid_lease_is_rejected(monkeypatch):
    monkeypatch.setenv("APP__WORKER__LEASE_SECONDS", "-1")
    with pytest.raises(ValidationError):
        Settings(_env_file=None)


def test_secrets_do_not_appear_in_repr(monkeypatch):
    monkeypatch.setenv("APP__DB__URL", "postgresql+asyncpg://app:s3cretDbPass@db:5432/tasks")
    monkeypatch.setenv("APP__RABBITMQ__URL", "amqp://user:s3cretMqPass@mq:5672/")
    settings = Settings(_env_file=None)
    for text in (repr(settings), str(settings), repr(settings.db), repr(settings.rabbitmq)):
        assert "s3cretDbPass" not in text
        assert "s3cretMqPass" not in text
    dumped = settings.model_dump_json()
    assert "s3cretDbPass" not in dumped
    assert "s3cretMqPass" not in dumped
    # but the code that connects still gets them
    assert "s3cretDbPass" in settings.db.dsn
    assert "s3cretMqPass" in settings.rabbitmq.dsn


def test_a_multi_host_database_url_is_given_to_sqlalchemy_as_host_parameters() -> None:
    from sqlalchemy.dialects.postgresql.asyncpg import dialect
    from sqlalchemy.engine import make_url

    settings = DatabaseSettings(
        url=SecretStr(
            "postgresql+asyncpg://krolik:pw@db1:5432,db2:5433/tasks?target_session_attrs=read-write"
        )
    )
    assert settings.dsn == (
        "postgresql+asyncpg://krolik:pw@/tasks"
        "?host=db1:5432&host=db2:5433&target_session_attrs=read-write"
    )
    _, connect = dialect().create_connect_args(make_url(settings.dsn))
    assert connect["host"] == ["db1", "db2"]
    assert connect["port"] == [5432, 5433]
    assert connect["target_session_attrs"] == "read-write"


def test_a_single_host_database_url_is_unchanged() -> None:
    url = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
    assert DatabaseSettings(url=SecretStr(url)).dsn == url
