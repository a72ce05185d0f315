"""The task page of a task with very many events and attributes, through Flask's test client
(rows written with SQL, as test_pages.py)."""

from __future__ import annotations

from tasktree.exporter.tree import status as st

from ..integration.api_support import Task, at, insert_run

TRACE, FAT, DOOMED = "c4" * 16, "05" * 8, "06" * 8


def fat_task(db) -> None:
    """A job that logged each of 20,000 rows as an event and set 3,000 attributes."""
    events = [{"name": "row processed", "time_ns": at(i / 1000), "attributes": {"row": i}}
              for i in range(20_000)]
    attributes = {f"col.{i:04d}": f"value {i}" for i in range(3000)}
    insert_run(db, TRACE, [Task(FAT, name="fat task", attributes=attributes, events=events,
                                resource={"service.name": "fat", "host.name": "worker-7"})])


def test_a_task_with_20000_events_and_3000_attributes_shows_the_last_events_and_first_attributes(
        client, db):
    fat_task(db)
    response = client.get(f"/runs/{TRACE}/tasks/{FAT}")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert len(html) < 1_000_000
    assert "col.0000" in html and "col.0499" in html and "col.0500" not in html
    assert "the first 500 of 3,000 attributes shown" in html
    assert ">19999<" in html and ">19900<" in html and ">19899<" not in html
    assert "the last 100 of 20,000 events shown" in html
    assert '<ol class="events" start="19901">' in html  # numbered as in the whole list
    assert f'href="/api/runs/{TRACE}/tasks/{FAT}">all of them in the JSON API</a>' in html
    # The short sections come before the events, and the top of the page leads to each.
    assert html.index('id="resource"') < html.index('id="events"')
    assert "worker-7" in html[html.index('id="resource"'):html.index('id="events"')]
    for anchor in ("Links (0)", "Resource (2)", "Events (20,000)", "Attributes (3,000)"):
        assert anchor in html[html.index('id="sections"'):html.index('id="attributes"')], anchor


def test_a_stalled_task_page_says_its_running_state_attribute_is_not_its_status(client, db):
    insert_run(db, TRACE, [Task(DOOMED, name="doomed", status=st.STALLED, end=None,
                                heartbeat=at(1), attributes={"tasktree.state": "running"})])
    html = client.get(f"/runs/{TRACE}/tasks/{DOOMED}").get_data(as_text=True)
    note = html[html.index('id="stalled-note"'):]
    assert note.index("Stalled: no heartbeat for over 30 s") < note.index("</p>")
    row = html[html.index("<th scope=\"row\">tasktree.state</th>"):]
    assert "(what the task last reported; its status is at the top)" in row[:row.index("</tr>")]
