"""The RabbitMQ node that leads the task queue dies, freezes or stops mid-flow.

5,000 tasks flow from the database through a relay and two workers, each process
connected to a different first node of the three; once a fifth of them are done, the
node leading the quorum queue (the relay's and one worker's node) is killed -9, frozen
(SIGSTOP) or stopped cleanly. The processes fail over to the other nodes by themselves
(a frozen node is found by the AMQP heartbeat), and every task runs exactly once: the
handler notes each run in a file, and a broker fault never makes a worker lose a run
(messages are acked after the claim, and a redelivered one finds its task claimed).
The stall after the fault (the longest gap between two finishes) is printed.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import text

from krolik.broker.base import Delivery
from krolik.broker.rabbitmq import RabbitMQBroker
from krolik.broker.topology import Topology
from krolik.errors import BrokerUnavailable
from krolik.settings import Settings
from krolik.store.postgres import PostgresTaskStore
from krolik.store.records import NewTask
from tests.e2e.conftest import Cluster, wait_until
from tests.support.clusters import RabbitCluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.e2e]

TASKS = 5_000
BATCH = 250
STALL_SQL = """
SELECT coalesce(max(gap), 0) FROM (
    SELECT extract(epoch FROM finished_at - lag(finished_at) OVER (ORDER BY finished_at)) AS gap
    FROM krolik_tasks WHERE finished_at >= to_timestamp(:since) - interval '1 second'
) AS gaps
"""


async def status_counts(store: PostgresTaskStore) -> dict[str, int]:
    async with store.engine.connect() as conn:
        rows = await conn.execute(text("SELECT status, count(*) FROM krolik_tasks GROUP BY 1"))
        return {status: count for status, count in rows.all()}


async def longest_stall_after(store: PostgresTaskStore, since: float) -> float:
    """The longest gap between consecutive finishes after ``since`` (epoch seconds)."""
    async with store.engine.connect() as conn:
        gap = await conn.scalar(
            text(STALL_SQL),
            {"since": since},
        )
    return float(gap or 0)


async def lead_from(nodes: RabbitCluster, settings: Settings, node: int) -> str:
    """Declare the task queue through ``node``, so that node leads it; its name."""
    on_node = settings.rabbitmq.model_copy(update={"url": SecretStr(nodes.url(node))})
    topology = Topology.from_settings(on_node, settings.default_queue)
    broker = RabbitMQBroker(on_node, topology)

    async def ignore(_: Delivery) -> None:
        return None

    # The exchanges. A node thawed or restarted by the test before listens a moment before
    # its AMQP handshakes succeed (it may still be healing its partition): try again.
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        try:
            await broker.connect()
            break
        except BrokerUnavailable:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)
    subscription = await broker.consume([settings.default_queue], 1, ignore)
    await subscription.cancel()
    await broker.close()
    return topology.queue(settings.default_queue).name


FAULTS: dict[
    str, tuple[Callable[[RabbitCluster, int], None], Callable[[RabbitCluster, int], None]]
] = {
    # fault, then how the node comes back for the next test
    "kill -9": (RabbitCluster.kill9, lambda nodes, node: nodes.start()),
    "SIGSTOP": (RabbitCluster.freeze, RabbitCluster.thaw),
    "clean stop": (RabbitCluster.stop_node, lambda nodes, node: nodes.start()),
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fault", list(FAULTS))
async def test_leader_node_fault_loses_and_repeats_nothing(
    fault: str,
    rabbit_nodes: RabbitCluster,
    settings: Settings,
    store: PostgresTaskStore,
    cluster: Cluster,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rabbit_nodes.wait_running(3, ask=2)
    queue = await lead_from(rabbit_nodes, settings, node=1)
    leader = rabbit_nodes.queue_leader(queue, ask=2)
    assert leader == 1, f"the queue was declared on node 1 but node {leader} leads it"

    cluster.relay(env={"APP__RABBITMQ__URL": rabbit_nodes.urls(1, 2, 3)})
    for name, order in (("worker-a", (1, 2, 3)), ("worker-b", (2, 3, 1))):
        cluster.spawn(
            name, "worker", "--app", "tests.e2e.handlers", "--concurrency", "32",
            env={"APP__RABBITMQ__URL": rabbit_nodes.urls(*order)},
        )  # fmt: skip

    runs = tmp_path / "runs.txt"
    runs.touch()

    async def submit() -> None:
        for _ in range(TASKS // BATCH):
            await store.enqueue(
                [NewTask(name="note_run", queue="default", payload={"runs": str(runs)})] * BATCH
            )
            await asyncio.sleep(0.05)

    submitting = asyncio.create_task(submit())
    await wait_until(lambda: _done_at_least(store, TASKS // 5), 90, f"{TASKS // 5} tasks are done")
    inflict, restore = FAULTS[fault]
    fault_at, started = time.time(), time.monotonic()
    inflict(rabbit_nodes, leader)
    try:
        await submitting
        counts = await drained_counts(store, timeout=150, what=f"after the {fault}")
        drained = time.monotonic() - started
    finally:
        restore(rabbit_nodes, leader)

    assert counts == {"done": TASKS}
    per_task = Counter(line.split()[0] for line in runs.read_text().splitlines())
    assert len(per_task) == TASKS
    twice = {task: n for task, n in per_task.items() if n > 1}
    assert not twice, f"tasks ran more than once: {twice}"
    stall = await longest_stall_after(store, fault_at)
    with capsys.disabled():
        print(
            f"\nRabbitMQ {fault} of the leader (node {leader}): {TASKS} done, 0 lost, 0 twice; "
            f"longest stall {stall:.1f}s; the rest drained in {drained:.1f}s"
        )


async def _done_at_least(store: PostgresTaskStore, count: int) -> bool:
    return (await status_counts(store)).get("done", 0) >= count


async def drained_counts(store: PostgresTaskStore, *, timeout: float, what: str) -> dict[str, int]:
    """The status counts once every task is done; on a timeout, what was left."""
    deadline = time.monotonic() + timeout
    while True:
        counts = await status_counts(store)
        if counts.get("done", 0) >= TASKS:
            return counts
        if time.monotonic() > deadline:
            async with store.engine.connect() as conn:
                outbox = await conn.scalar(text("SELECT count(*) FROM krolik_outbox"))
            raise AssertionError(
                f"not all {TASKS} tasks done {timeout}s {what}: {counts}, outbox rows {outbox}"
            )
        await asyncio.sleep(0.1)
