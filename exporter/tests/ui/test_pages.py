"""The pages' server side through Flask's test client: what each page says, escaping, errors.

Rows are written with SQL (``api_support.insert_run``), so every stored value is known.
"""

from __future__ import annotations

import json

import pytest

from tasktree.exporter.settings import Settings
from tasktree.exporter.tree import status as st
from tasktree.exporter.ui import CONTENT_SECURITY_POLICY

from ..integration.api_support import SECOND, T0, Task, at, insert_run, placeholder

TRACE = "a1" * 16
ROOT, CHILD, LEAF, GHOST, ORPHAN = "01" * 8, "02" * 8, "03" * 8, "0a" * 8, "0b" * 8
XSS = '<img src=x onerror="alert(1)"><script>alert(2)</script>'
STACK = "Traceback (most recent call last):\n" + "".join(
    f'  File "job.py", line {n}, in step_{n}\n' for n in range(40)) + "ValueError: bad row"


def sample_run(db, trace: str = TRACE, job: str = "nightly") -> None:
    insert_run(db, trace, [
        Task(ROOT, name="etl", end=at(10)),
        Task(CHILD, ROOT, name=XSS, status=st.ERROR, start=at(1), end=at(2), message="disk full",
             attributes={"xss": XSS, "long": "x" * 1000, "rows": 7},
             events=[{"name": "exception", "time_ns": at(1.5), "attributes": {
                 "exception.type": "ValueError", "exception.message": "bad row",
                 "exception.stacktrace": STACK}}],
             links=[{"trace_id": "b2" * 16, "span_id": "c3" * 8, "attributes": {}},
                    {"trace_id": "", "span_id": "c3", "attributes": {}}],  # not a valid link
             resource={"service.name": job, "host.name": "worker-1",
                       "process.environment_variable.BATCH_DATE": "2026-11-26"}),
        Task(LEAF, CHILD, name="leaf", status=st.RUNNING, start=at(1.2), end=None,
             heartbeat=at(1.4)),
        placeholder(GHOST),
        Task(ORPHAN, GHOST, name="orphan", start=at(3), end=at(4)),
    ], job=job)


def page(client, url: str, status: int = 200) -> str:
    response = client.get(url)
    assert response.status_code == status, (url, response.status_code)
    assert response.mimetype == "text/html"
    return response.get_data(as_text=True)


def test_runs_page_lists_runs_with_job_status_counts_and_links(client, db):
    sample_run(db)
    html = page(client, "/")
    assert f'href="/runs/{TRACE}"' in html and ">etl</a>" in html and "nightly" in html
    assert "3 ok" not in html
    assert f'<a class="r-error" href="/runs/{TRACE}/tasks?status=error">1 error</a>' in html
    assert 'datetime="2026-11-26T17:33:26.123456789Z"' in html


@pytest.mark.parametrize(("query", "shown"), [
    ("job=nightly", True), ("job=other", False), ("status=ok", True), ("status=error", False),
    ("from=2026-11-26T17:00:00Z", True), ("from=2026-11-26T18:00:00Z", False),
    ("to=2026-11-26T17:00:00Z", False), ("job=&status=&from=&to=", True),  # blank: no filter
])
def test_runs_page_filters(client, db, query, shown):
    sample_run(db)
    assert (f'data-trace-id="{TRACE}"' in page(client, f"/?{query}")) is shown


def tree_data(html: str) -> dict:
    """The JSON the run page embeds for its script."""
    start = html.index('<script type="application/json" id="tree-data">') + 47
    return json.loads(html[start:html.index("</script>", start)])


def test_run_page_embeds_roots_and_the_open_roots_first_children(client, db):
    sample_run(db)
    data = tree_data(page(client, f"/runs/{TRACE}"))
    roots = [(r["span_id"], r["status"]) for r in data["roots"]]
    assert roots == [(ROOT, "ok"), (GHOST, "missing")]
    assert [c["span_id"] for c in data["open"][ROOT]["children"]] == [CHILD]
    assert data["run"]["counts"] == {"ok": 2, "error": 1, "running": 1, "stalled": 0}


def test_span_fields_are_text_in_pages_and_in_embedded_json(client, db):
    sample_run(db)
    for url in (f"/runs/{TRACE}", f"/runs/{TRACE}/tasks/{CHILD}", "/search?q=disk",
                f"/runs/{TRACE}?node={CHILD}"):
        html = page(client, url)
        assert "<img src=x" not in html and "<script>alert" not in html, url
    escaped = "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;"
    assert escaped in page(client, f"/runs/{TRACE}/tasks/{CHILD}")


def test_task_page_shows_everything_with_long_values_folded_whole(client, db):
    sample_run(db)
    html = page(client, f"/runs/{TRACE}/tasks/{CHILD}")
    for text in ("disk full", "worker-1", "BATCH_DATE", "2026-11-26", "b2" * 16, ">7<",
                 "ValueError: bad row", 'line 39, in step_39'):
        assert text in html, text
    assert "<details class=\"long\"><summary><bdi>" + "x" * 120 + "…" in html and "x" * 1000 in html
    assert f'href="/runs/{TRACE}/tasks/{ROOT}"' in html  # breadcrumb and parent link


def test_a_failed_task_page_shows_the_exception_before_the_attribute_tables(client, db):
    sample_run(db)
    html = page(client, f"/runs/{TRACE}/tasks/{CHILD}")
    failure = html.index('id="failure"')
    assert failure < html.index("<h2>Attributes</h2>")
    section = html[failure : html.index("</section>", failure)]
    assert "<strong>ValueError</strong>: bad row" in section
    assert "Traceback (most recent call last)" in section and "line 39, in step_39" in section
    assert 'id="failure"' not in page(client, f"/runs/{TRACE}/tasks/{ROOT}")  # no exception


def test_running_task_page_has_its_last_heartbeat(client, db):
    sample_run(db)
    html = page(client, f"/runs/{TRACE}/tasks/{LEAF}")
    assert 'data-heartbeat="2026-11-26T17:33:27.523456789Z"' in html


def test_subtree_page_starts_at_the_node_with_breadcrumbs(client, db):
    sample_run(db)
    html = page(client, f"/runs/{TRACE}?node={CHILD}")
    data = tree_data(html)
    assert [r["span_id"] for r in data["roots"]] == [CHILD] and list(data["open"]) == [CHILD]
    assert f'href="/runs/{TRACE}?node={ROOT}">etl</a>' in html


def crumbs(client, url: str) -> str:
    """The breadcrumbs of a page, white space collapsed."""
    nav = page(client, url).split('<nav class="crumbs"', 1)[1].split("</nav>", 1)[0]
    return " ".join(nav.split())


def test_breadcrumbs_cut_at_the_nearest_ancestors_say_that_more_are_above(client, db):
    from tasktree.exporter.ui.views import MAX_ANCESTORS

    chain = [f"{n + 1:016x}" for n in range(MAX_ANCESTORS + 3)]
    insert_run(db, TRACE, [Task(span, chain[n - 1] if n else None, name=f"d-{n}")
                           for n, span in enumerate(chain)])
    deepest, shallow = chain[-1], chain[MAX_ANCESTORS]  # the last has more above; this one not
    for url in (f"/runs/{TRACE}/tasks/{deepest}", f"/runs/{TRACE}?node={deepest}"):
        assert "… (more levels)</span> › <a" in crumbs(client, url), url
        assert ">d-2</a>" in crumbs(client, url) and ">d-1</a>" not in crumbs(client, url)
    for url in (f"/runs/{TRACE}/tasks/{shallow}", f"/runs/{TRACE}?node={shallow}"):
        assert "more levels" not in crumbs(client, url) and ">d-0</a>" in crumbs(client, url)


def test_search_by_whole_run_id_opens_the_run_and_by_whole_task_id_the_task(client, db):
    sample_run(db)
    assert client.get(f"/search?q={TRACE}").headers["Location"] == f"/runs/{TRACE}"
    assert client.get(f"/search?q={CHILD}").headers["Location"] == f"/runs/{TRACE}/tasks/{CHILD}"


def test_search_by_prefix_and_words_lists_tasks(client, db):
    sample_run(db)
    assert f'href="/runs/{TRACE}/tasks/{CHILD}"' in page(client, "/search?q=%22disk%22")
    assert f'href="/runs/{TRACE}/tasks/{ORPHAN}"' in page(client, f"/search?q={ORPHAN[:6]}")
    assert "No tasks found" in page(client, "/search?q=nothing-like-this")


@pytest.mark.parametrize(("url", "status", "says"), [
    ("/runs/xyz", 400, "trace id must be 32 hexadecimal digits"),
    (f"/runs/{TRACE}/tasks/123", 400, "span id must be 16 hexadecimal digits"),
    (f"/runs/{TRACE}?node=zz", 400, "span id must be 16"),
    ("/?status=failed", 400, "status must be one of"),
    ("/?from=yesterday", 400, "from must be an RFC 3339"),
    ("/?cursor=!!", 400, "cursor is not valid"),
    (f"/runs/{'ee' * 16}", 404, "no run with trace id"),
    (f"/runs/{TRACE}/tasks/{'ee' * 8}", 404, "no task"),
    (f"/runs/{TRACE}?node={'ee' * 8}", 404, "no task"),
])
def test_bad_or_unknown_ids_are_an_error_page_not_a_500(client, db, url, status, says):
    sample_run(db)
    assert says in page(client, url, status)


def test_pages_forbid_inline_scripts(client, db):
    response = client.get("/")
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self';" in policy and "unsafe-inline" not in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert client.get("/runs/xyz").headers["Content-Security-Policy"] == policy


def test_runs_page_pages_on_with_a_cursor(client, db):
    for n in range(53):
        start = T0 + n * SECOND
        insert_run(db, f"{n + 1:032x}", [Task(ROOT, start=start, end=start + 1)])
    first = page(client, "/")
    assert first.count('class="run"') == 50
    next_url = first.split('id="next-page"')[0].rsplit('href="', 1)[1].split('"')[0]
    next_url = next_url.replace("&amp;", "&")
    assert page(client, next_url).count('class="run"') == 3


def test_the_docker_page_has_the_common_frame_and_says_how_to_add_a_host_when_none_is(api_pool):
    from tasktree.exporter.app import create_app
    from tasktree.exporter.docker import DockerService

    settings = Settings.from_env({})
    service = DockerService(settings, api_pool)  # no TASKTREE_DOCKER_HOSTS: no host
    try:
        html = page(create_app(settings, api_pool, docker=service).test_client(), "/docker")
    finally:
        service.close()
    assert '<header class="top">' in html and 'class="brand" href="/"' in html  # the same frame
    assert 'href="/docker">Docker</a>' in html and 'id="search-box"' in html
    assert 'id="no-hosts"' in html and "TASKTREE_DOCKER_HOSTS=" in html
    assert 'id="containers"' not in html  # no empty tables


def test_an_empty_runs_page_shows_the_lines_that_send_a_first_task(client, db):
    html = page(client, "/")
    assert 'id="first-steps"' in html
    assert "OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318" in html  # this host, the port
    assert 'with task("hello")' in html
    assert 'id="first-steps"' not in page(client, "/?job=nothing-like-this")  # filtered: no
    sample_run(db)
    assert 'id="first-steps"' not in page(client, "/")


def test_a_search_that_finds_nothing_says_which_words_it_looked_for(client, db):
    sample_run(db)
    html = page(client, "/search?q=Nothing-LIKE%20this&job=etl")
    searched = html[html.index('id="searched"') :]
    for word in ("nothing", "like", "this"):  # the words as the search uses them: lower case
        assert f"<q>{word}</q>" in searched, word
    assert "words match as prefixes" in searched and "within the filters" in searched
    assert "no words" in page(client, "/search?q=%2B%2B%2B")  # only punctuation


def test_a_search_of_hex_digits_says_it_looked_for_ids_and_links_the_word_search(client, db):
    """"4711" or "2026" is taken as an id prefix: the page said it had looked for the word."""
    sample_run(db)
    html = page(client, "/search?q=4711&job=etl")
    searched = html[html.index('id="searched"') :]
    assert "id starts with <q>4711</q>" in searched and "within the filters" in searched
    assert "word that starts with" not in searched
    assert 'href="/search?job=etl&amp;q=%224711%22"' in searched  # the same search, as a word


def test_counts_link_to_the_lists_of_those_tasks_in_the_run_or_the_subtree(client, db):
    sample_run(db)
    run = page(client, f"/runs/{TRACE}")
    assert f'<a class="r-running" href="/runs/{TRACE}/tasks?status=running">1 running</a>' in run
    task = page(client, f"/runs/{TRACE}/tasks/{ROOT}")
    assert f'href="/runs/{TRACE}/tasks?node={ROOT}&amp;status=error">1 error</a>' in task
    failed = page(client, f"/runs/{TRACE}/tasks?node={ROOT}&status=error")
    assert "1 " in failed and "task in" in failed and "the subtree of" in failed
    assert f'href="/runs/{TRACE}/tasks/{CHILD}"' in failed and XSS not in failed  # text, escaped
    running = page(client, f"/runs/{TRACE}/tasks?status=running")
    assert f'data-span-id="{LEAF}"' in running and f'data-span-id="{CHILD}"' not in running
    assert "ok tasks are its children" in page(client, f"/runs/{TRACE}/tasks?status=ok", 400)
    assert "no task" in page(client, f"/runs/{TRACE}/tasks?node={'ee' * 8}&status=error", 404)


def test_the_list_pages_on_newest_first(client, db):
    failures = [Task(f"{100 + i:016x}", ROOT, f"f-{i:02d}", st.ERROR, at(i), at(i + 1))
                for i in range(60)]
    insert_run(db, TRACE, [Task(ROOT, name="etl", end=at(100)), *failures])
    first = page(client, f"/runs/{TRACE}/tasks?node={ROOT}&status=error")
    assert first.count('class="task"') == 50 and first.index(">f-59<") < first.index(">f-58<")
    next_url = first.split('id="next-page"')[0].rsplit('href="', 1)[1].split('"')[0]
    second = page(client, next_url.replace("&amp;", "&"))
    assert second.count('class="task"') == 10 and ">f-09<" in second and ">f-10<" not in second


def test_first_and_next_failure_step_through_the_runs_failures_oldest_first(client, db):
    sample_run(db)
    db.execute("UPDATE tasks SET status = %s, start_ns = %s, path = %s WHERE span_id = %s",
               (st.ERROR, at(5), [bytes.fromhex(TRACE), bytes.fromhex(GHOST),
                                  bytes.fromhex(ORPHAN)], bytes.fromhex(ORPHAN)))
    run = page(client, f"/runs/{TRACE}")
    assert f'href="/runs/{TRACE}/failures" id="first-failure"' in run
    response = client.get(f"/runs/{TRACE}/failures")
    assert response.status_code == 302 and f"node={CHILD}&failure=" in response.location
    shown = page(client, response.location)
    assert 'id="next-failure"' in shown
    after = response.location.split("failure=")[1]
    second = client.get(f"/runs/{TRACE}/failures?after={after}")
    assert f"node={ORPHAN}&failure=" in second.location
    assert "the last failure" in page(client, second.location)
    last = second.location.split("failure=")[1]
    assert "no failed task" in page(client, f"/runs/{TRACE}/failures?after={last}", 404)


@pytest.mark.parametrize(("query", "found"), [
    ("q=etl", {ROOT}),
    ("q=disk&status=error", {CHILD}),
    ("q=disk&status=ok", set()),
    ("status=running", {LEAF}),  # filters alone list tasks too
    ("q=disk&job=nightly&from=2026-11-26T17:33:27Z", {CHILD}),
    ("q=disk&job=nightly&from=2026-11-26T17:33:28Z", set()),
    ("q=etl&job=other", set()),
    ("q=etl&to=2026-11-26T17:00:00Z", set()),
])
def test_search_page_applies_the_runs_pages_filters_and_keeps_them(client, db, query, found):
    sample_run(db)
    html = page(client, f"/search?{query}")
    listed = {s for s in (ROOT, CHILD, LEAF, ORPHAN) if f'href="/runs/{TRACE}/tasks/{s}"' in html}
    assert listed == found
    form = html[html.index('<form class="filters" id="search-filters"'):]
    form = form[:form.index("</form>")]
    for name, value in (pair.split("=") for pair in query.split("&")):
        if name == "status":
            assert f'<option value="{value}" selected>' in form
        else:
            assert f'name="{name}" value="{value}"' in form


def test_search_pages_on_with_its_filters(client, db):
    tasks = [Task(f"{100 + i:016x}", ROOT, f"step {i}", st.ERROR if i % 2 else st.OK, at(i),
                  at(i + 1)) for i in range(120)]
    insert_run(db, TRACE, [Task(ROOT, name="etl", end=at(200)), *tasks])
    first = page(client, "/search?q=step&status=error")
    assert first.count('class="task"') == 50
    more = first[:first.index(">more →</a>")].rsplit('href="', 1)[1].split('"')[0]
    assert "status=error" in more and "q=step" in more
    second = page(client, more.replace("&amp;", "&"))
    assert second.count('class="task"') == 10 and ">step 1<" in second and ">step 2<" not in second


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/"), ("GET", "/login"), ("GET", "/static/ui/tasktree.js"),
    ("GET", "/docker/static/docker.js"), ("GET", "/docker/static/docker.css"),
    ("GET", "/api/runs"), ("GET", "/api/runs/nope"), ("GET", "/api/docker/hosts"),
    ("GET", "/api/no/such/route"), ("GET", "/api/live/runs"), ("GET", "/metrics"),
    ("GET", "/healthz"),
    # Flask's own 404 and 405 pages: no blueprint's after_request runs for them
    ("GET", "/no/such/page"), ("POST", "/healthz"),
])
def test_every_answer_of_the_web_port_carries_the_security_headers(tasktree_server, method, path):
    """No answer may be sniffed into another type (a JSON body or /metrics rendered as HTML)."""
    import requests

    with requests.request(method, tasktree_server.web + path, timeout=10, stream=True) as answer:
        headers = answer.headers  # a live stream's body never ends: only its headers are read
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert headers["X-Frame-Options"] == "DENY"


def test_a_link_with_ids_that_are_not_whole_is_shown_without_a_page(client, db):
    """An SDK may send a link with an empty or short id: it linked to /runs//tasks/c3."""
    sample_run(db)
    html = page(client, f"/runs/{TRACE}/tasks/{CHILD}")
    links = html[html.index('class="links"') :]
    assert f'href="/runs/{"b2" * 16}/tasks/{"c3" * 8}"' in links
    assert "/runs//tasks/" not in html and 'tasks/c3"' not in html
    assert "not a valid link (trace id <code>empty</code>, span id <code>c3</code>)" in links
