"""`dalston drain WORKER` through the registry (issue 11): the worker stays up, takes no new session, and its
running calls move to other workers at their next pause; their clients see `session.resumed` and no error."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest
from cluster_fixtures import FAST_CLUSTER_ENV, REPO, ProcessGroup, poll_until
from failover_fixtures import FAILOVER_ENV, CallRecord, build_call, by_id, run_call, start_cluster, worker_of

from dalston.supervisor.cluster.redis_registry import RedisRegistry
from dalston.supervisor.cluster.registry import SessionRecord, SessionStatus
from dalston.wer import word_error_rate

pytestmark = pytest.mark.slow


async def dalston_drain(worker_id: str, redis_url: str, prefix: str) -> tuple[int, str]:
    env = {**os.environ, **FAST_CLUSTER_ENV, "DALSTON_REGISTRY_KEY_PREFIX": prefix}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dalston.cli", "drain", worker_id, "--redis-url", redis_url, cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    async with asyncio.timeout(60):
        output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode()


async def test_dalston_drain_moves_a_workers_calls_elsewhere_and_keeps_it_up_taking_nothing_new(
    dalston_processes: ProcessGroup, cluster_registry: RedisRegistry,
) -> None:
    gateway, workers = await start_cluster(dalston_processes)
    call = build_call()
    record = CallRecord()
    drained: list[str] = []

    async def drain_soon(session_id: str) -> None:
        async def later() -> None:
            await asyncio.sleep(6.0)
            worker_id = await worker_of(cluster_registry, session_id)
            code, output = await dalston_drain(worker_id, dalston_processes.redis_url, dalston_processes.key_prefix)
            assert code == 0, output
            drained.append(worker_id)

        asyncio.get_running_loop().create_task(later())

    await run_call(gateway.stream_url, call, record, on_begin=drain_soon)
    assert len(drained) == 1
    assert not record.of_type("error")
    assert len(record.of_type("session.resumed")) == 1
    assert record.events[-1]["type"] == "session.end"
    assert word_error_rate(call.transcript, record.events[-1]["transcript"]) <= 0.2
    worker = by_id(workers, drained[0])
    assert worker.running  # drained, not stopped

    async def marked_draining() -> bool:
        return {w.worker_id: str(w.status) for w in await cluster_registry.list_workers()}[drained[0]] == "draining"

    await poll_until(marked_draining, "the drained worker shows as draining")


async def test_dalston_drain_of_an_unknown_worker_says_so_and_fails(
    dalston_processes: ProcessGroup,
) -> None:
    code, output = await dalston_drain("nobody", dalston_processes.redis_url, dalston_processes.key_prefix)
    assert code == 1
    assert "no worker 'nobody'" in output


async def test_a_handed_back_call_that_no_other_worker_can_take_goes_on_where_it_was(
    dalston_processes: ProcessGroup, cluster_registry: RedisRegistry,
) -> None:
    worker = dalston_processes.start_worker("only", capacity=2)
    gateway = dalston_processes.start_gateway(env=FAILOVER_ENV)
    await dalston_processes.wait_ready(worker, gateway)
    call = build_call()
    record = CallRecord()
    kept: list[asyncio.Task[SessionRecord | None]] = []

    async def drain_soon(session_id: str) -> None:
        async def later() -> SessionRecord | None:
            await asyncio.sleep(3.0)
            code, output = await dalston_drain("only", dalston_processes.redis_url, dalston_processes.key_prefix)
            assert code == 0, output

            async def handback_kept() -> bool:
                return "gateway.handback_kept" in await asyncio.to_thread(gateway.log_path.read_text)

            await poll_until(handback_kept, "the gateway kept the handed-back call where it was", timeout_s=30)
            return await cluster_registry.get_session(session_id)  # while the call goes on

        kept.append(asyncio.get_running_loop().create_task(later()))

    await run_call(gateway.stream_url, call, record, speed=2.0, on_begin=drain_soon)
    assert not record.of_type("error") and not record.of_type("session.resumed")
    assert record.events[-1]["type"] == "session.end"
    assert word_error_rate(call.transcript, record.events[-1]["transcript"]) <= 0.2
    # The call went on on its draining worker, and so did its registry record (and the slot it holds there).
    during = await kept[0]
    assert during is not None and during.worker_id == "only" and during.status is SessionStatus.ACTIVE
