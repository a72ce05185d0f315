"""A docker host vanishing in the middle of a deploy: its task ends in error, the others finish."""

from __future__ import annotations

import time

from . import docker_lab
from .docker_support import call, deploy_body


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
