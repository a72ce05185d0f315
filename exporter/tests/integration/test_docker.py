"""Docker hosts (issue 6) against two real docker engines and a real registry (design.md §6).

Most tests drive the Flask app in-process (real engines, real PostgreSQL for the audit log); the
last ones go through a real ``tasktree serve`` to see the deploy's run in the task tree.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import psycopg
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from . import docker_lab
from .docker_support import (
    OPERATOR,
    SECRET,
    VIEWER,
    call,
    call_server,
    containers_named,
    deploy_body,
    serve_docker,
)

# -- seeing -----------------------------------------------------------------------------------


def test_listing_shows_containers_and_images_of_both_hosts_at_once(lab, make_app):
    client, _ = make_app()
    call(client, "POST", "/api/docker/pull?wait=60", body={"image": lab.image(), "hosts": ["*"]})
    for host in ("alpha", "beta"):
        with lab.client(host) as engine:
            assert _idle_container(engine, lab.image(), f"seen-on-{host}")["Id"]

    body = call(client, "GET", "/api/docker/containers?refresh=1", token=VIEWER)

    assert [(h["name"], h["up"], h["error"]) for h in body["hosts"]] == [
        ("alpha", True, None),
        ("beta", True, None),
    ]
    assert all(h["version"] and h["api_version"] for h in body["hosts"])
    assert {(c["host"], c["name"], c["state"]) for c in body["containers"]} == {
        ("alpha", "seen-on-alpha", "created"),
        ("beta", "seen-on-beta", "created"),
    }
    # An unknown host is a bad parameter wherever it is named: as for a pull's or deploy's hosts.
    for path in ("/api/docker/containers?host=nope", "/api/docker/images?host=alpha&host=nope"):
        refused = call(client, "GET", path, token=VIEWER, expect=400)["error"]
        assert refused == {"code": "bad_request", "message": "unknown docker host(s): nope"}
    images = call(client, "GET", "/api/docker/images", token=VIEWER)["images"]
    assert {(i["host"], lab.image() in i["tags"]) for i in images} == {
        ("alpha", True),
        ("beta", True),
    }
    hosts = call(client, "GET", "/api/docker/hosts", token=VIEWER)["hosts"]
    assert [(h["name"], h["containers"], h["labels"]["role"]) for h in hosts] == [
        ("alpha", 1, "alpha"),
        ("beta", 1, "beta"),
    ]


def test_listing_is_cached_for_the_ttl_and_refresh_asks_the_hosts_again(lab, make_app):
    client, _ = make_app(docker_cache_ttl=60.0)
    assert call(client, "GET", "/api/docker/containers", token=VIEWER)["containers"] == []
    with lab.client("alpha") as engine:
        _idle_container(engine, _local_image(lab, engine), "late")

    cached = call(client, "GET", "/api/docker/containers", token=VIEWER)["containers"]
    fresh = call(client, "GET", "/api/docker/containers?refresh=1", token=VIEWER)["containers"]

    assert cached == []
    assert [c["name"] for c in fresh] == ["late"]


def test_listing_cache_and_operations_in_redis_are_shared_by_two_processes(lab, make_app):
    import redis

    url = "redis://127.0.0.1:6379/0"
    try:
        redis.Redis.from_url(url).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis on 127.0.0.1:6379 is part of this machine's services: {exc}")
    first, _ = make_app(redis_url=url, docker_cache_ttl=60.0)
    second, _ = make_app(redis_url=url, docker_cache_ttl=60.0)
    call(first, "GET", "/api/docker/containers?refresh=1", token=VIEWER)
    with lab.client("beta") as engine:
        _idle_container(engine, _local_image(lab, engine), "after-first-listing")

    seen_by_second = call(second, "GET", "/api/docker/containers", token=VIEWER)["containers"]

    assert seen_by_second == []  # the first process's snapshot, from Redis
    op = call(
        first, "POST", "/api/docker/pull?wait=60", body={"image": lab.image(), "hosts": ["*"]}
    )
    polled = call(second, "GET", f"/api/docker/operations/{op['operation']['id']}", token=VIEWER)
    assert (
        polled["operation"]["status"] == "ok"
        and polled["operation"]["seq"] == op["operation"]["seq"]
    )


def _idle_container(engine, image: str, name: str) -> dict:
    """A created (not started) container of ``image`` that would only run ``true``, no network."""
    return engine.create_container(
        image,
        command=["true"],
        name=name,
        host_config=engine.create_host_config(network_mode="none"),
    )


def _local_image(lab, engine) -> str:
    """Import the busybox tar straight into an engine (no registry), as ``local/busybox:1``."""
    engine.import_image(
        src=docker_lab.busybox_tar(),
        repository="local/busybox",
        tag="1",
        changes=['CMD ["/bin/sh"]'],
    )
    return "local/busybox:1"


def test_dead_and_slow_hosts_show_down_within_their_timeout_while_the_other_is_listed(
    lab, make_app
):
    host_timeout, slow_delay = 1.0, 5.0
    slow = docker_lab.SlowProxy(lab.engines["beta"].socket, delay=slow_delay)
    try:
        client, _ = make_app(
            {"dead": "unix:///tmp/tasktree-no-such-docker.sock", "slow": slow.url},
            timeout=host_timeout,
        )
        started = time.monotonic()
        body = call(client, "GET", "/api/docker/containers?refresh=1", token=VIEWER)
        elapsed = time.monotonic() - started
    finally:
        slow.close()

    status = {h["name"]: (h["up"], h["error"]) for h in body["hosts"]}
    assert status["alpha"] == (True, None) and status["beta"] == (True, None)
    assert status["dead"][0] is False and "cannot connect" in status["dead"][1]
    assert status["slow"] == (False, "no answer within 1s")
    dead = next(h for h in body["hosts"] if h["name"] == "dead")
    assert dead["last_error"] == dead["error"] and dead["last_error_at"]
    print(f"listing took {elapsed:.2f}s (host timeout {host_timeout}s, slow host {slow_delay}s)")
    # Past the timeout, well short of the slow host's answer: the listing did not wait for it.
    assert elapsed < (host_timeout + slow_delay) / 2, "the listing waited for the slow host"


def test_an_action_on_a_host_slower_than_the_listing_timeout_waits_as_long_as_actions_may(
    lab, make_app
):
    """The first call to a host agrees on its API version; for an action it must wait as an
    action does (TASKTREE_DOCKER_ACTION_TIMEOUT), not as a listing (the host's 1 s here)."""
    slow = docker_lab.SlowProxy(lab.engines["beta"].socket, delay=1.5)
    try:
        client, _ = make_app({"slow": slow.url}, timeout=1.0, docker_action_timeout=30.0)
        op = call(client, "POST", "/api/docker/pull?wait=120",
                  body={"image": lab.image(), "hosts": ["slow"]})["operation"]  # fmt: skip
    finally:
        slow.close()
    assert op["status"] == "ok", op["hosts"]


# -- acting -----------------------------------------------------------------------------------


def test_pull_from_the_registry_on_both_hosts_with_progress_per_host(lab, make_app):
    client, _ = make_app()

    op = call(
        client,
        "POST",
        "/api/docker/pull?wait=60",
        body={"image": lab.image(), "hosts": ["alpha", "beta"]},
    )
    op = op["operation"]

    assert op["status"] == "ok" and op["kind"] == "pull"
    for host in ("alpha", "beta"):
        state = op["hosts"][host]
        assert state["status"] == "ok", state
        assert state["progress"]["percent"] == 100.0 and state["progress"]["layers_done"] >= 1
        assert state["result"]["image_id"].startswith("sha256:")
        with lab.client(host) as engine:
            assert engine.inspect_image(lab.image())["Id"] == state["result"]["image_id"]


def test_batch_deploy_to_both_hosts_then_redeploy_replaces_the_container(lab, make_app):
    client, _ = make_app()

    first = call(client, "POST", "/api/docker/deploy?wait=60", body=deploy_body(lab, "1"))[
        "operation"
    ]
    assert first["status"] == "ok", first["hosts"]
    second = call(client, "POST", "/api/docker/deploy?wait=60", body=deploy_body(lab, "2"))[
        "operation"
    ]
    assert second["status"] == "ok", second["hosts"]

    for host in ("alpha", "beta"):
        assert first["hosts"][host]["result"]["action"] == "created"
        result = second["hosts"][host]["result"]
        assert result["action"] == "replaced" and result["state"] == "running"
        assert result["replaces"] == first["hosts"][host]["result"]["container_id"][:12]
        [web] = containers_named(lab, host, "web")
        assert web["Id"] == result["container_id"] and web["Image"] == lab.image("2")
        with lab.client(host) as engine:
            names = [n for c in engine.containers(all=True) for n in c["Names"]]
            env = engine.inspect_container(web["Id"])["Config"]["Env"]
        assert names == ["/web"]  # the old one is gone, no temporary name is left
        traceparent = next(v for v in env if v.startswith("TRACEPARENT="))
        assert traceparent.split("-")[1:3] == [second["trace_id"], second["hosts"][host]["span_id"]]


@pytest.mark.parametrize("bad", [
    {"command": ["/no/such/program"]},  # accepted at create, refused at start
    {"volumes": ["/etc/hostname:/bin"]},  # a file over a directory: refused at start
])  # fmt: skip
def test_a_redeploy_whose_container_cannot_start_keeps_the_running_one(lab, make_app, bad):
    client, _ = make_app()
    first = call(client, "POST", "/api/docker/deploy?wait=60",
                 body=deploy_body(lab, "1", hosts=["alpha"]))["operation"]  # fmt: skip
    assert first["status"] == "ok", first["hosts"]
    [before] = containers_named(lab, "alpha", "web")

    op = call(client, "POST", "/api/docker/deploy?wait=60",
              body=deploy_body(lab, "1", hosts=["alpha"], **bad))["operation"]  # fmt: skip

    assert op["status"] == "error"
    message = op["hosts"]["alpha"]["message"]
    assert "the new container did not start" in message
    assert f"{before['Id'][:12]} kept and started again" in message
    with lab.client("alpha") as engine:
        names = [n for c in engine.containers(all=True) for n in c["Names"]]
        state = engine.inspect_container(before["Id"])["State"]["Status"]
    assert names == ["/web"] and state == "running"  # the old one, running; no new one left


def test_a_one_character_name_docker_would_refuse_is_refused_up_front_dry_run_too(lab, make_app):
    """Docker wants 2 characters at least; it said so only at the final rename, the new container
    running by then under its temporary name (and a dry run said ok)."""
    client, _ = make_app()
    for dry_run in (True, False):
        body = deploy_body(lab, "1", name="q", dry_run=dry_run)
        refused = call(client, "POST", "/api/docker/deploy?wait=60", body=body, expect=400)
        assert refused["error"]["code"] == "bad_request"
        assert "'name'" in refused["error"]["message"]
        assert "2-128 characters" in refused["error"]["message"]
    for host in ("alpha", "beta"):
        with lab.client(host) as engine:
            assert engine.containers(all=True) == []


def _all_done(client, ids: list[str], timeout: float = 90.0) -> list[dict]:
    """The operations ``ids`` once each has ended (polled)."""
    deadline = time.monotonic() + timeout
    while True:
        ops = [call(client, "GET", f"/api/docker/operations/{i}")["operation"] for i in ids]
        if all(op["finished"] for op in ops):
            return ops
        assert time.monotonic() < deadline, [(op["id"], op["hosts"]) for op in ops]
        time.sleep(0.1)


def _names(lab, host: str) -> list[str]:
    with lab.client(host) as engine:
        return sorted(n for c in engine.containers(all=True) for n in c["Names"])


@pytest.mark.parametrize("replacing", [False, True])
def test_deploys_of_one_name_to_one_host_at_once_take_turns_and_leave_one_container(
    lab, make_app, replacing
):
    """Deploys of a name at once: the one that lost the final rename used to fail (409 name in
    use, or 404 for the old container another one had removed) and leave its new container
    running under the temporary name."""
    client, _ = make_app()
    call(client, "POST", "/api/docker/pull?wait=60",
         body={"image": lab.image(), "hosts": ["alpha"]})  # fmt: skip
    first = None
    if replacing:
        first = call(client, "POST", "/api/docker/deploy?wait=60",
                     body=deploy_body(lab, "1", hosts=["alpha"]))["operation"]  # fmt: skip
        assert first["status"] == "ok", first["hosts"]

    body = deploy_body(lab, "1", hosts=["alpha"])
    ids = [
        call(client, "POST", "/api/docker/deploy", body=body, expect=202)["operation"]["id"]
        for _ in range(3)
    ]
    ops = [op["hosts"]["alpha"] for op in _all_done(client, ids)]

    assert [op["status"] for op in ops] == ["ok"] * 3, [op["message"] for op in ops]
    [web] = containers_named(lab, "alpha", "web")
    assert _names(lab, "alpha") == ["/web"] and web["State"] == "running"  # no leftovers
    # One after the other: each replaced what the one before it left, the last one is what runs.
    news = {op["result"]["container_id"][:12] for op in ops}
    replaced = {op["result"]["replaces"] for op in ops}
    earlier = {first["hosts"]["alpha"]["result"]["container_id"][:12]} if first else {None}
    assert web["Id"][:12] in news and replaced == (news - {web["Id"][:12]}) | earlier


def test_a_deploy_of_the_same_name_from_elsewhere_at_once_fails_one_of_them_leaving_no_trace(
    lab, make_app
):
    """Two tasktree processes (here: two host entries for one engine, one of them through a proxy
    that holds answers back) deploy ``web`` at once: they do not take turns, so one of them
    finds the name taken when it names its new container.  That one fails saying so and removes
    its container; before, it stayed running under its temporary name."""
    proxy = docker_lab.SlowProxy(lab.engines["alpha"].socket, delay=1.5)
    try:
        client, _ = make_app({"alpha-too": proxy.url}, docker_action_timeout=30.0)
        call(client, "POST", "/api/docker/pull?wait=60",
             body={"image": lab.image(), "hosts": ["alpha"]})  # fmt: skip
        slow = call(client, "POST", "/api/docker/deploy", expect=202,
                    body=deploy_body(lab, "1", hosts=["alpha-too"]))["operation"]  # fmt: skip
        _wait_for_name(lab, "alpha", lambda n: n.startswith("/web-tasktree-"))
        # The slow one's container exists; its answer is held back: this one overtakes it.
        fast = call(client, "POST", "/api/docker/deploy?wait=60",
                    body=deploy_body(lab, "1", hosts=["alpha"]))["operation"]  # fmt: skip
        [slow] = _all_done(client, [slow["id"]])
    finally:
        proxy.close()

    results = [fast["hosts"]["alpha"], slow["hosts"]["alpha-too"]]
    assert sorted(r["status"] for r in results) == ["error", "ok"], results
    won = next(r for r in results if r["status"] == "ok")
    lost = next(r for r in results if r["status"] == "error")
    [web] = containers_named(lab, "alpha", "web")
    assert _names(lab, "alpha") == ["/web"] and web["State"] == "running"
    assert web["Id"] == won["result"]["container_id"]
    assert lost["message"].startswith(
        "could not name the new container web (taken meanwhile, by hand or by another tasktree): "
        "409: "
    ), lost["message"]


def test_a_replace_whose_new_container_is_pruned_midway_keeps_the_old_one_running(lab, make_app):
    """A ``docker container prune`` on the host removes the new container (created, not yet
    started) while the deploy waits for an answer: the deploy fails, and the old container gets
    its name back and runs again.  Before, undoing stopped at the missing new container and left
    the old one stopped."""
    proxy = docker_lab.SlowProxy(lab.engines["alpha"].socket, delay=1.5)
    try:
        client, _ = make_app({"alpha-slow": proxy.url}, docker_action_timeout=30.0)
        first = call(client, "POST", "/api/docker/deploy?wait=60",
                     body=deploy_body(lab, "1", hosts=["alpha"]))["operation"]  # fmt: skip
        assert first["status"] == "ok", first["hosts"]
        [before] = containers_named(lab, "alpha", "web")
        op = call(client, "POST", "/api/docker/deploy", expect=202,
                  body=deploy_body(lab, "1", hosts=["alpha-slow"]))["operation"]  # fmt: skip
        new = _wait_for_name(lab, "alpha", lambda n: n.startswith("/web-tasktree-"))
        with lab.client("alpha") as engine:
            pruned = engine.prune_containers()["ContainersDeleted"]
        assert pruned == [new["Id"]]  # only the new one: the old one still runs
        [op] = _all_done(client, [op["id"]])
    finally:
        proxy.close()

    assert _names(lab, "alpha") == ["/web"]
    with lab.client("alpha") as engine:
        assert engine.inspect_container("web")["Id"] == before["Id"]
        assert engine.inspect_container("web")["State"]["Status"] == "running"
    state = op["hosts"]["alpha-slow"]
    assert state["status"] == "error"
    assert "404: No such container" in state["message"], state["message"]
    assert state["message"].endswith(f"; {before['Id'][:12]} kept and started again")


def _wait_for_name(lab, host: str, matches, timeout: float = 30.0) -> dict:
    """The first container on ``host`` with a name that ``matches``, once there is one."""
    deadline = time.monotonic() + timeout
    with lab.client(host) as engine:
        while time.monotonic() < deadline:
            for c in engine.containers(all=True):
                if any(matches(n) for n in c["Names"]):
                    return c
            time.sleep(0.02)
    raise AssertionError(f"no container on {host} with such a name: {_names(lab, host)}")


def test_dry_run_deploy_reports_the_plan_and_changes_nothing(lab, make_app):
    client, _ = make_app()
    call(client, "POST", "/api/docker/deploy?wait=60", body=deploy_body(lab, "1"))
    before = {h: containers_named(lab, h, "web") for h in ("alpha", "beta")}

    op = call(
        client, "POST", "/api/docker/deploy?wait=60", body=deploy_body(lab, "2", dry_run=True)
    )["operation"]

    assert op["status"] == "ok" and op["dry_run"] is True
    for host in ("alpha", "beta"):
        plan = op["hosts"][host]["result"]
        assert plan == {
            "action": "replace",
            "pull": True,
            "replaces": before[host][0]["Id"][:12],
            "replaces_state": "running",
            "dry_run": True,
        }
        assert containers_named(lab, host, "web") == before[host]
        with lab.client(host) as engine:
            assert not any(lab.image("2") in (i.get("RepoTags") or []) for i in engine.images())


def test_a_dry_run_fails_on_a_host_where_the_deploy_would_fail_and_still_changes_nothing(
    lab, make_app
):
    client, _ = make_app()
    with lab.client("alpha") as engine:
        network = engine.create_network("tasktree-dry-net")["Id"]
    try:
        on_alpha_only = call(
            client, "POST", "/api/docker/deploy?wait=60",
            body=deploy_body(lab, "1", network_mode="tasktree-dry-net", dry_run=True),
        )["operation"]  # fmt: skip
        not_in_registry = call(
            client, "POST", "/api/docker/deploy?wait=60",
            body=deploy_body(lab, "1", image=lab.image("no-such-tag"), dry_run=True),
        )["operation"]  # fmt: skip
    finally:
        with lab.client("alpha") as engine:
            engine.remove_network(network)

    assert on_alpha_only["status"] == "partial"
    assert on_alpha_only["hosts"]["alpha"]["status"] == "ok"
    beta = on_alpha_only["hosts"]["beta"]
    assert beta["status"] == "error"
    assert beta["message"] == "network 'tasktree-dry-net' does not exist on this host"
    assert not_in_registry["status"] == "error"
    for host in ("alpha", "beta"):
        said = not_in_registry["hosts"][host]["message"]
        assert said.startswith(f"{lab.image('no-such-tag')} cannot be pulled: "), said
        assert containers_named(lab, host, "web") == []
        with lab.client(host) as engine:
            assert not any(lab.image("1") in (i.get("RepoTags") or []) for i in engine.images())


def test_deploy_to_a_dead_host_fails_there_and_succeeds_elsewhere(lab, make_app):
    client, _ = make_app({"dead": "unix:///tmp/tasktree-no-such-docker.sock"})

    op = call(
        client,
        "POST",
        "/api/docker/deploy?wait=60",
        body=deploy_body(lab, "1", hosts=["alpha", "dead"]),
    )["operation"]

    assert op["status"] == "partial"
    assert op["hosts"]["alpha"]["status"] == "ok"
    assert (
        op["hosts"]["dead"]["status"] == "error"
        and "cannot connect" in op["hosts"]["dead"]["message"]
    )


def test_stop_start_restart_logs_and_remove_one_container(lab, make_app):
    client, _ = make_app()
    call(client, "POST", "/api/docker/deploy?wait=60", body=deploy_body(lab, "1", hosts=["alpha"]))
    base = "/api/docker/hosts/alpha/containers/web"

    stopped = call(client, "POST", base + "/stop", body={"timeout": 5})["result"]
    started = call(client, "POST", base + "/start")["result"]
    restarted = call(client, "POST", base + "/restart", body={"timeout": 5})["result"]
    time.sleep(0.3)
    logs = call(client, "GET", base + "/logs?tail=10")
    refused = call(client, "POST", base + "/remove", expect=409)
    removed = call(client, "POST", base + "/remove", body={"force": True})["result"]

    assert (stopped["state"], started["state"], restarted["state"]) == (
        "exited",
        "running",
        "running",
    )
    assert logs.decode().count("started") >= 2  # one line per start
    assert refused["error"]["code"] == "conflict"
    assert removed["state"] == "removed" and containers_named(lab, "alpha", "web") == []
    assert call(client, "POST", base + "/start", expect=404)["error"]["code"] == "not_found"


def test_a_start_refused_for_a_missing_network_says_so_not_that_the_container_is_gone(
    lab, make_app
):
    client, _ = make_app()
    with lab.client("alpha") as engine:
        network = engine.create_network("tasktree-gone-net")["Id"]
        engine.create_container(_local_image(lab, engine), command=["true"], name="orphaned",
                                host_config=engine.create_host_config(
                                    network_mode="tasktree-gone-net"))  # fmt: skip
        engine.remove_network(network)
    try:
        refused = call(client, "POST", "/api/docker/hosts/alpha/containers/orphaned/start",
                       expect=409)["error"]  # fmt: skip
        assert refused["code"] == "conflict" and "network" in refused["message"]
        assert "no container" not in refused["message"]
    finally:
        with lab.client("alpha") as engine:
            engine.remove_container("orphaned", force=True)


def test_operation_progress_streams_as_server_sent_events_until_done(lab, make_app):
    client, _ = make_app()
    accepted = call(
        client, "POST", "/api/docker/pull", body={"image": lab.image(), "hosts": ["*"]}, expect=202
    )["operation"]

    response = client.get(
        f"/api/docker/operations/{accepted['id']}/events",
        headers={"Authorization": f"Bearer {VIEWER}"},
        buffered=False,
    )
    text = b"".join(response.response).decode()

    events = [block for block in text.split("\n\n") if block.startswith("event:")]
    assert events[0].startswith("event: operation") and events[-1].startswith("event: done")
    last = json.loads(events[-1].split("data: ", 1)[1])
    assert last["status"] == "ok" and set(last["hosts"]) == {"alpha", "beta"}
    assert (
        call(client, "GET", f"/api/docker/operations/{accepted['id']}", token=VIEWER)["operation"][
            "seq"
        ]
        == last["seq"]
    )


# -- security and audit -----------------------------------------------------------------------


def test_a_viewer_may_list_but_every_action_is_refused_403_and_no_credential_401(lab, make_app):
    client, _ = make_app()
    actions = [
        ("POST", "/api/docker/deploy", deploy_body(lab)),
        ("POST", "/api/docker/pull", {"image": lab.image(), "hosts": ["*"]}),
        ("POST", "/api/docker/hosts/alpha/containers/web/stop", None),
        ("POST", "/api/docker/hosts/alpha/containers/web/remove", None),
        ("GET", "/api/docker/hosts/alpha/containers/web/logs", None),
    ]

    for method, path, body in actions:
        assert (
            call(client, method, path, token=VIEWER, body=body, expect=403)["error"]["code"]
            == "forbidden"
        )
        assert (
            call(client, method, path, token=None, body=body, expect=401)["error"]["code"]
            == "unauthorized"
        )
        call(client, method, path, token="not-a-configured-token", body=body, expect=401)
    call(client, "GET", "/api/docker/containers", token=VIEWER)
    call(
        client, "GET", "/api/docker/containers", token=None, expect=401
    )  # viewer tokens are configured
    assert containers_named(lab, "alpha", "web") == []


def test_without_viewer_tokens_a_loopback_server_lists_anonymously_but_actions_need_an_operator(
    lab, make_app
):
    client, _ = make_app(viewer_tokens=None)

    call(client, "GET", "/api/docker/containers", token=None)
    call(
        client,
        "POST",
        "/api/docker/pull",
        token=None,
        body={"image": lab.image(), "hosts": ["*"]},
        expect=401,
    )


def test_the_audit_log_records_who_did_what_where_and_the_result(lab, make_app, docker_pool):
    client, _ = make_app()
    op = call(
        client,
        "POST",
        "/api/docker/deploy?wait=60",
        body=deploy_body(lab, "1", env={"DB_PASSWORD": SECRET}),
    )["operation"]
    call(client, "POST", "/api/docker/hosts/beta/containers/web/stop", body={"timeout": 5})

    entries = call(client, "GET", "/api/docker/audit?limit=5", token=VIEWER)["entries"]

    stop, deploy = entries[0], entries[1]
    assert (
        stop["actor"],
        stop["role"],
        stop["action"],
        stop["hosts"],
        stop["target"],
        stop["status"],
    ) == ("olga", "operator", "stop", ["beta"], "web", "ok")
    assert (
        deploy["actor"],
        deploy["action"],
        deploy["hosts"],
        deploy["status"],
        deploy["operation_id"],
        deploy["trace_id"],
    ) == ("olga", "deploy", ["alpha", "beta"], "ok", op["id"], op["trace_id"])
    assert deploy["request"]["env_keys"] == ["DB_PASSWORD"] and deploy["finished_at"]
    assert {h: r["status"] for h, r in deploy["result"].items()} == {"alpha": "ok", "beta": "ok"}
    with docker_pool.connection() as conn:
        stored = conn.execute(
            "SELECT request::text || coalesce(result::text, '') FROM docker_audit"
        ).fetchall()
    assert not any(SECRET in row[0] for row in stored)


def test_metrics_show_hosts_and_container_state_cpu_memory_and_restarts(lab, make_app):
    client, service = make_app({"dead": "unix:///tmp/tasktree-no-such-docker.sock"})
    call(client, "POST", "/api/docker/deploy?wait=60", body=deploy_body(lab, "1"))
    call(client, "POST", "/api/docker/hosts/beta/containers/web/stop", body={"timeout": 5})
    registry = CollectorRegistry()
    registry.register(service.metrics)

    text = generate_latest(registry).decode()

    assert 'tasktree_docker_host_up{host="alpha"} 1.0' in text
    assert 'tasktree_docker_host_up{host="dead"} 0.0' in text
    assert 'tasktree_container_state{container="web",host="alpha",state="running"} 1.0' in text
    assert 'tasktree_container_state{container="web",host="beta",state="exited"} 1.0' in text
    assert 'tasktree_container_restarts_total{container="web",host="beta"} 0.0' in text
    cpu = registry.get_sample_value(
        "tasktree_container_cpu_seconds_total", {"host": "alpha", "container": "web"}
    )
    memory = registry.get_sample_value(
        "tasktree_container_memory_bytes", {"host": "alpha", "container": "web"}
    )
    assert cpu is not None and cpu >= 0 and memory is not None and memory > 0
    assert (
        registry.get_sample_value(
            "tasktree_container_memory_bytes", {"host": "beta", "container": "web"}
        )
        is None
    )


def test_the_docker_page_renders_without_data_and_with_its_script(lab, make_app):
    client, _ = make_app()
    viewer = {"Authorization": f"Bearer {VIEWER}"}

    with (
        client.get("/docker", headers=viewer) as page,
        client.get("/docker/static/docker.js") as script,
    ):
        html, js = page.data, script.data

    assert client.get("/docker").headers["Location"] == "/login?next=/docker"  # signed out
    assert page.status_code == 200 and b'src="/docker/static/docker.js"' in html
    assert b"<tr><td" not in html  # no data in the page itself: the script reads the API
    assert script.status_code == 200 and b"textContent" in js and b"innerHTML" not in js
    assert b"confirm(" in js  # destructive actions ask first


# -- through a real `tasktree serve` ----------------------------------------------------------


def test_deploy_through_tasktree_serve_is_a_run_with_a_task_per_host_and_keeps_secrets(
    lab, start_tasktree, tmp_path
):
    server = serve_docker(start_tasktree, lab, tmp_path)
    seen: list[bytes] = []

    refused = call_server(
        server, "POST", "/api/docker/deploy", VIEWER, deploy_body(lab, env={"K": SECRET}), 403
    )
    raw = call_server(
        server,
        "POST",
        "/api/docker/deploy",
        OPERATOR,
        deploy_body(lab, env={"DB_PASSWORD": SECRET, "MODE": "test"}),
        202,
    )
    op = json.loads(raw)["operation"]
    with urllib.request.urlopen(
        urllib.request.Request(
            f"{server.web}/api/docker/operations/{op['id']}/events",
            headers={"Authorization": f"Bearer {VIEWER}"},
        ),
        timeout=90,
    ) as stream:
        events = stream.read()
    done = json.loads(events.rsplit(b"event: done\ndata: ", 1)[1])
    assert done["status"] == "ok", done["hosts"]
    seen += [refused, raw, events]

    run = _wait_for_run(server, op["trace_id"])
    assert run["job"] == "tasktree.docker" and run["status"] == "ok"
    [root] = run["roots"]
    assert root["name"].startswith("docker deploy: web") and root["child_count"] == 2
    tasks = f"/api/runs/{op['trace_id']}/tasks"
    children = json.loads(
        call_server(server, "GET", f"{tasks}/{root['span_id']}/children", VIEWER)
    )["children"]
    assert sorted(c["name"] for c in children) == ["deploy on alpha", "deploy on beta"]
    assert {c["span_id"] for c in children} == {op_h["span_id"] for op_h in done["hosts"].values()}
    for task in [root, *children]:
        seen.append(
            call_server(server, "GET", f"{tasks}/{task['span_id']}", VIEWER)
        )
    for path in (
        "/api/docker/containers?refresh=1",
        "/api/docker/operations",
        f"/api/docker/operations/{op['id']}",
        "/api/docker/audit",
        f"/api/runs/{op['trace_id']}",
    ):
        seen.append(call_server(server, "GET", path, VIEWER))
    server.stop()
    seen.append(server.log_path.read_bytes())

    assert not [blob[:200] for blob in seen if SECRET.encode() in blob]
    with lab.client("alpha") as engine:  # ...while the container did get it
        env = engine.inspect_container("web")["Config"]["Env"]
    assert f"DB_PASSWORD={SECRET}" in env


def _wait_for_run(server, trace_id: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(server.database_url, autocommit=True) as conn:
                landed = conn.execute(
                    "SELECT count(*) FROM tasks WHERE trace_id = %s", (bytes.fromhex(trace_id),)
                ).fetchone()[0]
            if landed >= 3:
                server.wait_folded()
                return json.loads(call_server(server, "GET", f"/api/runs/{trace_id}", VIEWER))
        except psycopg.Error:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the deploy's run {trace_id} did not reach the tree")


def test_cli_without_a_server_says_where_it_looked_and_how_to_point_it_elsewhere(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{free.getsockname()[1]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKTREE_")}
    done = subprocess.run([sys.executable, "-m", "tasktree.exporter", "docker", "ls"],
                          env={**env, "TASKTREE_URL": url}, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 3 and not done.stdout
    assert f"cannot reach tasktree at {url}" in done.stderr
    assert "--url or TASKTREE_URL" in done.stderr and "Traceback" not in done.stderr


def test_stopping_tasktree_mid_operation_records_it_cut_short_and_exits_promptly(
    lab, start_tasktree, tmp_path
):
    """SIGTERM while a deploy waits on a slow engine: tasktree waits at most the action timeout
    (5 s here), then records the operation as cut short (audit row, run) and exits; it used to
    wait on the engine, serving scrapes with its database closed, and leave the row running."""
    import signal

    slow = docker_lab.SlowProxy(lab.engines["beta"].socket, delay=2.0)
    hosts_file = tmp_path / "hosts.yaml"
    hosts_file.write_text(lab.hosts_yaml({"slow": slow.url}))
    try:
        server = start_tasktree(env={
            "TASKTREE_DOCKER_HOSTS_FILE": str(hosts_file),
            "TASKTREE_OPERATOR_TOKENS": f"olga:{OPERATOR}",
            "TASKTREE_DOCKER_ACTION_TIMEOUT": "5",
        })  # fmt: skip
        raw = call_server(server, "POST", "/api/docker/deploy", OPERATOR,
                    deploy_body(lab, hosts=["slow"]), 202)  # fmt: skip
        operation = json.loads(raw)["operation"]["id"]
        time.sleep(1.0)  # the deploy is waiting on the slow engine
        stopping = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(60)
        took = time.monotonic() - stopping
    finally:
        slow.close()
    assert took < 20, f"tasktree took {took:.1f}s to stop"
    with psycopg.connect(server.database_url) as conn:
        status, result = conn.execute(
            "SELECT status, result FROM docker_audit WHERE operation_id = %s", (operation,)
        ).fetchone()
    assert status == "error" and "tasktree stopped before this operation ended" in result["error"]


@pytest.mark.parametrize("argv, says", [
    (["deploy", "img", "--name", "web", "--env-file", "/no/such/file"],
     "--env-file /no/such/file: No such file or directory"),
    (["deploy", "img", "--name", "web", "-e", "TASKTREE_TEST_UNSET_VARIABLE"],
     "-e TASKTREE_TEST_UNSET_VARIABLE: not set in this environment"),
    (["pull", "img", "--selector", "role"], "--selector wants name=value, got 'role'"),
])  # fmt: skip
def test_cli_usage_mistakes_exit_2_saying_what_is_wrong_before_asking_the_server(argv, says):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKTREE_")}
    done = subprocess.run([sys.executable, "-m", "tasktree.exporter", "docker", *argv],
                          env={**env, "TASKTREE_URL": "http://127.0.0.1:9"}, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert says in done.stderr


def test_cli_on_a_server_without_docker_hosts_says_how_to_name_them(start_tasktree):
    import os
    import subprocess
    import sys

    server = start_tasktree(env={"TASKTREE_OPERATOR_TOKENS": f"olga:{OPERATOR}"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKTREE_")}
    env.update(TASKTREE_URL=server.web, TASKTREE_TOKEN=OPERATOR)

    def cli(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tasktree.exporter", "docker", *argv],
                              env=env, capture_output=True, text=True, timeout=60)  # fmt: skip

    listed, pulled = cli("ls"), cli("pull", "nginx")
    assert listed.returncode == 0 and not listed.stdout  # nothing listed: no empty tables either
    assert pulled.returncode == 3 and not pulled.stdout
    for done in (listed, pulled):
        assert "no docker host is configured" in done.stderr
        assert "TASKTREE_DOCKER_HOSTS " in done.stderr  # and the file's variable:
        assert "TASKTREE_DOCKER_HOSTS_FILE" in done.stderr


def test_cli_pulls_deploys_lists_and_tails_logs_through_the_server_with_progress(
    lab, start_tasktree, tmp_path
):
    import os
    import subprocess
    import sys

    server = serve_docker(start_tasktree, lab, tmp_path)
    env = {
        **os.environ,
        "TASKTREE_URL": server.web,
        "TASKTREE_TOKEN": OPERATOR,
        "DB_PASSWORD": SECRET,
    }

    def cli(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "tasktree.exporter", "docker", *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    pulled = cli("pull", lab.image())
    deployed = cli(
        "deploy",
        lab.image(),
        "--name",
        "web",
        "--network",
        "none",
        "--stop-timeout",
        "5",
        "-e",
        "DB_PASSWORD",
        "-e",
        "MODE=cli",
        "--command",
        "sh -c 'echo from-cli; sleep 1000'",
    )
    listed = cli("ls", "--refresh")
    time.sleep(0.3)
    logs = cli("logs", "beta", "web", "--tail", "5")
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "tasktree.exporter",
            "docker",
            "deploy",
            lab.image(),
            "--name",
            "x",
            "--url",
            server.web,
        ],
        env={**env, "TASKTREE_TOKEN": "wrong-token-1"},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert pulled.returncode == 0, pulled.stderr
    assert [line.split()[0] for line in pulled.stdout.splitlines()[1:3]] == ["alpha", "beta"]
    assert "100.0%" in pulled.stdout and pulled.stdout.rstrip().endswith("ok")
    assert deployed.returncode == 0, deployed.stderr
    assert "created" in deployed.stdout and SECRET not in deployed.stdout + deployed.stderr
    assert listed.returncode == 0 and listed.stdout.count(" web ") == 2, listed.stdout
    assert logs.returncode == 0 and logs.stdout.strip() == "from-cli"
    assert refused.returncode == 3 and "401" in refused.stderr
