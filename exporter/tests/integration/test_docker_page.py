"""The Containers page (``/docker``) in a real browser against a real server and real engines."""

from __future__ import annotations

import re

from ..ui.browser import ARTIFACTS
from .docker_support import OPERATOR, SECRET, VIEWER, call_server, deploy_body, serve_docker


def test_docker_page_signed_in_deploys_with_confirmation_live_progress_and_a_confirmed_stop(
    lab,
    start_tasktree,
    tmp_path,
    browser,
):
    from playwright.sync_api import expect

    server = serve_docker(start_tasktree, lab, tmp_path)
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(10_000)
    page = context.new_page()
    dialogs: list[str] = []
    page_errors: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.accept()))  # confirm() says yes
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    # The page is served with the UI's Content-Security-Policy: a violation is a console error.
    page.on(
        "console",
        lambda msg: msg.type == "error" and "401" not in msg.text and page_errors.append(msg.text),
    )
    page.goto(server.web + "/docker")
    expect(page).to_have_url(server.web + "/login?next=/docker")  # no credential: sign in first

    page.fill("#login-token", OPERATOR)
    page.click("#login-form button[type=submit]")
    expect(page).to_have_url(server.web + "/docker")
    expect(page.locator("#signed-in-as")).to_have_text("olga (operator)")
    expect(page.locator("#hosts tbody tr")).to_have_count(2)
    expect(page.locator("#hosts tbody")).to_contain_text("20.10")
    form = page.locator("#deploy-form")
    form.locator("input[name=image]").fill(lab.image())
    form.locator("input[name=name]").fill("web")
    command = "sh -c 'trap \"exit 0\" TERM; while true; do sleep 1; done'"
    form.locator("input[name=command]").fill(command)
    form.locator("input[name=network_mode]").fill("none")
    form.locator("textarea[name=env]").fill(f"DB_PASSWORD={SECRET}")
    for host in ("alpha", "beta"):
        form.locator(f"input[name=host][value={host}]").check()
    form.locator("input[name=dry_run]").uncheck()
    form.locator("button[type=submit]").click()

    progress = page.locator("#operation")
    expect(progress).to_contain_text("deploy by olga: ok", timeout=60_000)
    expect(progress.locator("tbody tr")).to_have_count(2)
    expect(progress.locator(".host-ok")).to_have_count(2)
    expect(page.locator("#containers tbody tr")).to_have_count(2)
    page.screenshot(path=str(_artifact("docker-page.png")), full_page=True)
    on_alpha = page.locator("#containers tbody tr", has_text="alpha")
    on_alpha.get_by_role("button", name="stop").click()
    expect(on_alpha).to_contain_text("exited", timeout=20_000)
    # The listing refreshed after the stop leaves its result on the page.
    expect(page.locator("#notice")).to_have_text("stop web on alpha: done")

    assert [m for m in dialogs if m.startswith("Deploy ")] and "alpha" in dialogs[0]
    assert re.match(r"Stop container web on alpha\?", dialogs[-1])
    assert SECRET not in page.content() and form.locator("textarea[name=env]").input_value() == ""
    assert page_errors == []

    # Signed out, the page's calls are refused and it says so; the actions it made carried the
    # session's CSRF token (a stop without it is refused: tests/integration/test_auth.py).
    page.click("#logout-form button[type=submit]")
    expect(page).to_have_url(server.web + "/login?signed_out=1")
    answer = page.request.get(server.web + "/api/docker/hosts")
    assert answer.status == 401
    context.close()


def _artifact(name: str):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name


def test_docker_page_for_a_viewer_lists_containers_without_a_button_it_may_not_press(
    lab,
    start_tasktree,
    tmp_path,
    browser,
):
    from playwright.sync_api import expect

    server = serve_docker(start_tasktree, lab, tmp_path)
    deploy = deploy_body(lab, name="idle", hosts=["alpha"])
    call_server(server, "POST", "/api/docker/deploy?wait=60", OPERATOR, body=deploy)
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(10_000)
    page = context.new_page()
    page_errors: list[str] = []
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    page.goto(server.web + "/login?next=/docker")
    page.fill("#login-token", VIEWER)
    page.click("#login-form button[type=submit]")
    expect(page).to_have_url(server.web + "/docker")
    expect(page.locator("#signed-in-as")).to_have_text("victor (viewer)")
    expect(page.locator("#containers tbody tr", has_text="idle")).to_have_count(1, timeout=30_000)
    expect(page.locator("#hosts tbody tr")).to_have_count(2)
    expect(page.locator("#read-only")).to_contain_text(
        "victor is a viewer; this needs an operator token"
    )
    assert page.locator("button", has_text=re.compile("^(stop|restart|remove|logs)$")).count() == 0
    assert page.locator("#pull-form, #deploy-form").count() == 0
    expect(page.locator("#audit tbody tr").first).to_contain_text("deploy")  # reading stays
    assert page_errors == []
    context.close()

    # An operator, on the same page, has the buttons and no read-only line.
    context = browser.new_context()
    page = context.new_page()
    page.goto(server.web + "/login?next=/docker")
    page.fill("#login-token", OPERATOR)
    page.click("#login-form button[type=submit]")
    row = page.locator("#containers tbody tr", has_text="idle")
    expect(row.get_by_role("button", name="stop")).to_have_count(1, timeout=30_000)
    assert page.locator("#read-only").count() == 0 and page.locator("#deploy-form").count() == 1
    context.close()
