"""The submit path writes its answer straight from the task (``TaskOut.json_of``): it
must be the very document the model would give, for any task the store can return."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from krolik.api.schemas import TaskCreated, TaskDetail, TaskOut
from krolik.states import TaskStatus
from krolik.store.records import Task

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | INT64
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(blacklist_characters="\x00", codec="utf-8")),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
moments = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
maybe_moment = st.none() | moments
maybe_text = st.none() | st.text(max_size=40)


@st.composite
def tasks(draw: st.DrawFn) -> Task:
    created = draw(moments)
    return Task(
        id=draw(st.integers(min_value=1, max_value=2**63 - 1)),
        name=draw(st.from_regex(r"[A-Za-z0-9_.:\-]{1,20}", fullmatch=True)),
        queue=draw(st.from_regex(r"[A-Za-z0-9_\-]{1,20}", fullmatch=True)),
        payload=draw(json_values),
        status=draw(st.sampled_from(TaskStatus)),
        result=draw(json_values),
        error=draw(maybe_text),
        traceback=draw(maybe_text),
        attempts=draw(st.integers(min_value=0, max_value=100)),
        max_attempts=draw(st.none() | st.integers(min_value=1, max_value=100)),
        timeout_seconds=draw(st.none() | st.floats(min_value=0.001, max_value=1e6)),
        idempotency_key=draw(maybe_text),
        idempotency_scope=draw(maybe_text),
        request_hash=draw(maybe_text),
        request_id=draw(maybe_text),
        created_by=draw(maybe_text),
        worker_id=draw(maybe_text),
        cancel_requested=draw(st.booleans()),
        run_token=draw(st.integers(min_value=0, max_value=2**63 - 1)),
        run_at=created + timedelta(seconds=draw(st.integers(min_value=0, max_value=10**6))),
        lease_expires_at=draw(maybe_moment),
        created_at=created,
        updated_at=draw(moments),
        started_at=draw(maybe_moment),
        finished_at=draw(maybe_moment),
    )


def documents(model: type[TaskOut], task: Task) -> tuple[Any, Any]:
    return orjson.loads(model.json_of(task)), orjson.loads(model.of(task).model_dump_json())


@given(tasks())
def test_the_submit_answer_is_the_model_document(task: Task) -> None:
    written, modelled = documents(TaskCreated, task)
    assert written == modelled
    assert list(written) == list(modelled), "fields in another order"


@given(tasks())
def test_every_task_model_writes_the_same_document(task: Task) -> None:
    for model in (TaskOut, TaskDetail):
        written, modelled = documents(model, task)
        assert written == modelled


def test_the_document_names_every_field_of_the_model() -> None:
    task = Task(**{field.name: None for field in dataclasses.fields(Task)})
    task = dataclasses.replace(
        task,
        id=1,
        name="n",
        queue="q",
        status=TaskStatus.PENDING,
        attempts=0,
        cancel_requested=False,
        run_at=datetime(2030, 1, 1, tzinfo=UTC),
        created_at=datetime(2030, 1, 1, tzinfo=UTC),
        updated_at=datetime(2030, 1, 1, tzinfo=UTC),
    )
    assert set(orjson.loads(TaskCreated.json_of(task))) == set(TaskCreated.model_fields)
