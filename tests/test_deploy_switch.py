"""Blue-green switch end to end: real nginx, stand-in servers, client load.

The servers are tests/deploy_helpers/standin.py, which answer like Hobotnica
where a switch looks (health 200, 503 while draining, reads keep working,
webhooks 202 or 503 while draining) and drain for a while after SIGTERM. The
same switch with the real app and real jobs is in test_deploy_app.py.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy_helpers import rig

pytestmark = pytest.mark.integrational

DRAIN_SECONDS = 3.0


@pytest.fixture(scope="module")
def nginx_binary() -> str:
    binary, reason = rig.ensure_nginx()
    if binary is None:
        pytest.skip(f"nginx is not available: {reason}")
    return binary


@pytest.fixture
def deployment(nginx_binary: str, tmp_path: Path) -> Iterator[rig.Deployment]:
    serve = [sys.executable, str(rig.STANDIN), "serve", "--port", "{port}"]
    deployment = rig.Deployment.create(
        tmp_path,
        nginx_binary,
        serve,
        {"STANDIN_DRAIN_SECONDS": str(DRAIN_SECONDS)},
    )
    try:
        deployment.instance("start", deployment.active)
        assert rig.wait_port(deployment.active, 10), deployment.log(deployment.active)
        deployment.nginx.start()
        yield deployment
    finally:
        deployment.close()


def served_by(load: rig.Load) -> set[int]:
    return {json.loads(body)["port"] for body in load.last_bodies}


async def test_switch_under_load_fails_no_request(
    deployment: rig.Deployment,
) -> None:
    first, second = deployment.active, deployment.idle
    load = rig.Load(
        deployment.nginx.url,
        ["/api/health", "/api/repositories/o/n", "POST /api/webhooks/uid"],
    )
    load.start()
    try:
        await asyncio.sleep(0.5)
        assert served_by(load) == {first}

        # There and back again: the second switch starts `first` anew once
        # the draining instance on it has exited.
        for old, new in ((first, second), (second, first)):
            old_pid = deployment.pid(old)
            before = load.total
            switched = await rig.run_switch(deployment.env)
            assert switched.returncode == 0, switched.stdout + switched.stderr
            assert f"port {new} is active" in switched.stdout
            # The switch did not wait for the old instance to drain.
            assert rig.alive(old_pid)
            assert await asyncio.to_thread(rig.wait_exit, old_pid, DRAIN_SECONDS + 5)
            await asyncio.sleep(0.3)
            assert served_by(load) == {new}
            print(
                f"switch {old}->{new}: {switched.seconds:.2f} s, "
                f"{load.total - before} requests during switch and drain"
            )
    finally:
        await load.stop()

    print(f"requests: {load.total}, outcomes: {dict(load.outcomes)}")
    assert load.failures == []
    assert load.outcomes.keys() == {"200", "202"}
    assert load.total > 200
    upstream = rig.load_switch().parse_active_port(deployment.upstream.read_text())
    assert upstream == first


def post_webhook(connection: http.client.HTTPConnection) -> tuple[int, bytes]:
    connection.request(
        "POST", "/api/webhooks/uid", b"{}", {"Content-Type": "application/json"}
    )
    response = connection.getresponse()
    return response.status, response.read()


async def test_post_on_a_connection_opened_before_the_switch_is_answered(
    deployment: rig.Deployment,
) -> None:
    """The switch reloads nginx, and a graceful reload closes the old workers'
    idle client connections. A POST sent on one just as it is closed gets no
    answer, and is not retried (GitHub does not redeliver a webhook).
    http.client sends without looking whether the server has closed the
    connection, so here the POST always comes too late."""
    connection = http.client.HTTPConnection(
        "127.0.0.1", deployment.nginx.port, timeout=10
    )
    try:
        status, body = await asyncio.to_thread(post_webhook, connection)
        assert (status, json.loads(body)["port"]) == (202, deployment.active)
        old_workers = deployment.nginx.workers()
        switched = await rig.run_switch(deployment.env)
        assert switched.returncode == 0, switched.stdout + switched.stderr
        for pid in old_workers:
            assert await asyncio.to_thread(rig.wait_exit, pid, 10)
        try:
            status, body = await asyncio.to_thread(post_webhook, connection)
        except (http.client.HTTPException, OSError) as err:
            pytest.fail(f"the POST after the switch got no answer: {err!r}")
    finally:
        connection.close()
    assert (status, json.loads(body)["port"]) == (202, deployment.idle)


async def test_unhealthy_new_instance_rolls_back(
    deployment: rig.Deployment,
) -> None:
    # The new instance never starts listening.
    deployment.env[f"DEPLOY_TEST_SERVE_CMD_{deployment.idle}"] = "sleep 30"
    deployment.env["HOBOTNICA_HEALTH_TIMEOUT"] = "1.5"
    before = deployment.upstream.read_bytes()
    switched, load = await rig.switch_under_health_load(
        deployment.env, deployment.nginx.url
    )

    assert switched.returncode == 1, switched.stdout + switched.stderr
    assert (
        f"instance on port {deployment.idle} was not healthy within 1.5 s"
        in switched.stderr
    )
    assert "nothing was switched" in switched.stderr
    assert deployment.upstream.read_bytes() == before
    assert not (deployment.run_dir / f"{deployment.idle}.pid").exists()
    sleeper = int((deployment.run_dir / "started.pids").read_text().split()[-1])
    assert await asyncio.to_thread(rig.wait_exit, sleeper, 5)
    # nginx was never touched and still answers through the old instance.
    assert load.failures == []
    assert load.total > 0
    assert served_by(load) == {deployment.active}
    assert rig.alive(deployment.pid(deployment.active))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
async def test_a_switch_killed_mid_way_rolls_back(
    deployment: rig.Deployment, signum: signal.Signals
) -> None:
    """As when the ssh session of a `make deploy` closes."""
    deployment.env[f"DEPLOY_TEST_SERVE_CMD_{deployment.idle}"] = "sleep 30"
    deployment.env["HOBOTNICA_HEALTH_TIMEOUT"] = "20"
    before = deployment.upstream.read_bytes()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(rig.SWITCH),
        env=deployment.env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    await asyncio.sleep(1.5)  # waiting for the new instance's health
    process.send_signal(signum)
    _, stderr = await asyncio.wait_for(process.communicate(), 20)

    assert process.returncode == 1, stderr
    assert b"interrupted" in stderr
    assert b"nothing was switched" in stderr
    assert deployment.upstream.read_bytes() == before
    sleeper = int((deployment.run_dir / "started.pids").read_text().split()[-1])
    assert await asyncio.to_thread(rig.wait_exit, sleeper, 5)
    assert rig.alive(deployment.pid(deployment.active))


async def test_second_switch_is_refused_while_one_runs(
    deployment: rig.Deployment,
) -> None:
    deployment.env["STANDIN_START_DELAY"] = "1.5"  # keeps the first switch busy
    first = asyncio.create_task(rig.run_switch(deployment.env))
    await asyncio.sleep(0.7)
    assert not first.done()
    second = await rig.run_switch(deployment.env)
    assert second.returncode == 75
    assert "another switch is running" in second.stderr
    finished = await first
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert f"port {deployment.idle} is active" in finished.stdout
