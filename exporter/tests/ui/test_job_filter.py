"""The runs page's job filter: the jobs it offers, and what it says when it names no job
(Flask's test client; runs written with SQL, as test_pages.py)."""

from __future__ import annotations

import re

from ..integration.api_support import T0, Task, insert_run

NIGHTLY = "etl.nightly-load"


def jobs_seen(db, *names: str) -> None:
    """Jobs as the fold records them, the first named heard from last."""
    for age, name in enumerate(names):
        db.execute("INSERT INTO jobs (job, last_seen_ns) VALUES (%s, %s)", (name, T0 - age))


def hint(client, query: str) -> str | None:
    html = client.get(f"/?{query}").get_data(as_text=True)
    found = re.search(r'<p class="job-hint[^>]*>(.*?)</p>', html, re.S)
    return re.sub(r"<[^>]+>", "", found.group(1)) if found else None


def test_the_job_input_offers_the_jobs_latest_heard_from_first(client, db):
    jobs_seen(db, NIGHTLY, "billing", *(f"old-{n:03d}" for n in range(600)))
    html = client.get("/").get_data(as_text=True)
    assert 'id="f-job" list="known-jobs"' in html
    datalist = html[html.index('<datalist id="known-jobs">'):html.index("</datalist>")]
    offered = re.findall(r'<option value="([^"]*)">', datalist)
    assert offered[:3] == [NIGHTLY, "billing", "old-000"]
    assert len(offered) == 500 and "old-599" not in offered


def test_a_job_filter_that_names_no_job_says_so_and_offers_the_jobs_it_may_mean(client, db):
    insert_run(db, "d7" * 16, [Task("07" * 8, name="load")], job=NIGHTLY)
    jobs_seen(db, NIGHTLY, "billing")
    assert hint(client, "job=ETL.NIGHTLY-LOAD") == (
        "No job is named ETL.NIGHTLY-LOAD (the filter takes a job's exact name); did you mean"
        f" {NIGHTLY}?")
    assert hint(client, "job=etl&status=ok").endswith(f"did you mean {NIGHTLY}?")
    html = client.get("/?job=etl&status=ok").get_data(as_text=True)
    assert f'href="/?job={NIGHTLY}&amp;status=ok">{NIGHTLY}</a>' in html  # other filters kept
    assert hint(client, "job=nothing") == (
        "No job is named nothing (the filter takes a job's exact name), and no job's name"
        " contains it.")
    assert hint(client, f"job={NIGHTLY}&status=error") is None  # the job exists: no run failed
    assert hint(client, f"job={NIGHTLY}") is None  # its runs are listed
    # The API's filter stays exact: outside tools rely on it.
    assert client.get("/api/runs?job=ETL.NIGHTLY-LOAD").get_json()["runs"] == []
