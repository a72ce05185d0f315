"""A docker host vanishing in the middle of a deploy: its task ends in error, the others finish;
one dropping the connection mid-answer is shown down, saying so."""

from __future__ import annotations

import gc
import time
import warnings

import pytest
import requests

from tasktree.exporter.docker.hosts import HostClients, HostConfig

from . import docker_lab
from .docker_support import VIEWER, call, deploy_body


def test_a_host_that_vanishes_mid_deploy_fails_alone_and_the_other_host_finishes(lab, make_app):
    proxy = docker_lab.SlowProxy(lab.engines["beta"].url.removeprefix("unix://"), delay=0.5)
    try:
        client, _ = make_app({"fading": proxy.url}, timeout=10, docker_action_timeout=10)
        started = call(
            client,
            "POST",
            "/api/docker/deploy",
            expect=202,
            body=deploy_body(lab, "1", hosts=["alpha", "fading"]),
        )["operation"]
        op_path = f"/api/docker/operations/{started['id']}"
        deadline = time.monotonic() + 30
        while call(client, "GET", op_path)["operation"]["hosts"]["fading"]["status"] in (
            "pending",
            "queued",
        ):
            assert time.monotonic() < deadline, "the deploy never reached the fading host"
            time.sleep(0.05)
        proxy.close()  # the host is gone while its deploy is under way

        while (op := call(client, "GET", op_path)["operation"])["status"] in ("running", "pending"):
            assert time.monotonic() < deadline + 30, f"the operation never ended: {op}"
            time.sleep(0.2)
    finally:
        proxy.close()
    assert op["hosts"]["alpha"]["status"] == "ok"
    assert op["hosts"]["fading"]["status"] == "error" and op["hosts"]["fading"]["message"]
    assert op["status"] == "partial"


def test_a_host_that_drops_the_connection_mid_listing_is_down_saying_so_in_words(lab, make_app):
    """It showed the client library's exception instead: ``ChunkedEncodingError: ('Connection
    broken: IncompleteRead(1 bytes read, 2 more expected)', ...)``."""
    proxy = docker_lab.BreakingProxy(lab.engines["beta"].socket, "/containers/json", keep=1)
    try:
        client, _ = make_app({"breaking": proxy.url})
        body = call(client, "GET", "/api/docker/containers?refresh=1", token=VIEWER)
    finally:
        proxy.close()

    status = {h["name"]: (h["up"], h["error"]) for h in body["hosts"]}
    assert status["alpha"] == (True, None) and status["beta"] == (True, None)
    assert status["breaking"] == (False, "connection lost mid-answer")


def test_calls_to_a_host_whose_socket_is_gone_leave_no_socket_open(lab):
    """docker-py leaves the socket of a failed connect to the garbage collector; a host that
    vanishes must not leave tasktree's server with a socket per call (a ResourceWarning each)."""
    proxy = docker_lab.SlowProxy(lab.engines["beta"].url.removeprefix("unix://"), delay=0)
    clients = HostClients([HostConfig("gone", proxy.url)], default_timeout=5, action_timeout=5)
    try:
        client = clients.client("gone")
        assert client.version()["ApiVersion"]
        proxy.close()  # the socket file is gone: every new connection's connect fails
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            for _ in range(3):
                with pytest.raises(requests.exceptions.ConnectionError):
                    client.containers()
            gc.collect()
        assert [str(w.message) for w in caught if w.category is ResourceWarning] == []
    finally:
        clients.close()
        proxy.close()
