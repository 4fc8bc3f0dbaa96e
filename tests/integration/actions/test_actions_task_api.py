"""Task API contract: filters, pagination, transitions, and 401 / 404 / 409 / 422 answers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from services.actions import queries
from services.actions.app import create_app
from services.actions.db import Pool, create_pool
from services.actions.queries import RequeueFilter
from services.actions.settings import ActionsSettings
from shared.clock import FixedClock
from tests.integration.actions.seeding import apply_changes
from tests.integration.actions.support import AUTH, DAY, KEY, NOW, fetch, tier_change
from tests.support.metrics_text import sample_value

CUSTOMERS = ["a", "b", "c", "d", "e"]


@pytest.fixture
async def pool(actions_db: str) -> AsyncIterator[Pool]:
    pool = await create_pool(actions_db, size=4, application_name="test")
    # a, c, e become gold (senior-sales, due in 2 days); b, d become at risk (support, 24 h).
    changes = [
        tier_change(f"g-{c}", c, "value_tier", "silver", "gold") if i % 2 == 0
        else tier_change(f"r-{c}", c, "lifecycle_stage", "established", "at_risk")
        for i, c in enumerate(CUSTOMERS)
    ]  # fmt: skip
    await apply_changes(pool, changes, now=NOW)
    yield pool
    await pool.close()


@pytest.fixture
async def api(pool: Pool, actions_db: str, clock: FixedClock) -> AsyncIterator[httpx.AsyncClient]:
    settings = ActionsSettings(database_url=actions_db, api_keys=f"test:{KEY}")
    app = create_app(settings, pool=pool, clock=clock)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://actions", headers=AUTH
    ) as client:
        yield client


async def _items(api: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    response = await api.get("/v1/tasks", params=params)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_tasks_filter_by_customer_queue_status_and_overdue(
    api: httpx.AsyncClient, clock: FixedClock
) -> None:
    assert [t["customer_id"] for t in await _items(api)] == CUSTOMERS
    [task] = await _items(api, customer_id="b")
    assert (task["queue"], task["priority"], task["playbook"]) == ("support", "high", "at_risk")
    assert task["title"] == "Call the customer back: b is at risk"
    assert [t["customer_id"] for t in await _items(api, queue="senior-sales")] == ["a", "c", "e"]
    assert await _items(api, overdue="true") == []
    clock.advance(DAY + timedelta(seconds=1))  # the 24-hour call-backs are now late
    assert [t["customer_id"] for t in await _items(api, overdue="true")] == ["b", "d"]
    assert [t["customer_id"] for t in await _items(api, overdue="false")] == ["a", "c", "e"]
    await api.patch(f"/v1/tasks/{task['id']}", json={"action": "complete"})
    assert [t["customer_id"] for t in await _items(api, status="done")] == ["b"]
    assert [t["customer_id"] for t in await _items(api, status="open", queue="support")] == ["d"]
    assert [t["customer_id"] for t in await _items(api, overdue="true")] == ["d"]


async def test_tasks_filter_by_assignee_and_priority(api: httpx.AsyncClient) -> None:
    # An agent's own tasks, and the urgent work first: both were a 422 (`query_unknown`).
    [a] = await _items(api, customer_id="a")
    [b] = await _items(api, customer_id="b")
    for task, name in ((a, "ann"), (b, "bob")):
        assigned = await api.patch(f"/v1/tasks/{task['id']}",
                                   json={"action": "assign", "assignee": f" {name} "})  # fmt: skip
        assert assigned.status_code == 200, assigned.text
    assert [t["customer_id"] for t in await _items(api, assignee="ann")] == ["a"]
    assert await _items(api, assignee="nobody") == []
    by_priority = {p: [t["customer_id"] for t in await _items(api, priority=p)]
                   for p in ("high", "normal")}  # fmt: skip
    everyone = await _items(api)
    assert by_priority == {
        p: [t["customer_id"] for t in everyone if t["priority"] == p] for p in ("high", "normal")
    }
    assert by_priority["high"], everyone
    refused = await api.get("/v1/tasks", params={"priority": "asap"})
    assert refused.status_code == 422
    assert [e["field"] for e in refused.json()["errors"]] == ["query.priority"]


async def test_if_match_lets_one_of_two_agents_take_a_task_and_tells_the_other(
    api: httpx.AsyncClient,
) -> None:
    # Both read the task, then both assign it: without If-Match both got a 200 and the last
    # one silently won.
    [a] = await _items(api, customer_id="a")
    url = f"/v1/tasks/{a['id']}"
    read = await api.get(url)
    etag = read.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"'), etag
    assert (await api.get(url)).headers["etag"] == etag  # the same until it changes
    takes = await asyncio.gather(*[
        api.patch(url, json={"action": "assign", "assignee": name}, headers={"If-Match": etag})
        for name in ("ann", "bob")
    ])  # fmt: skip
    assert sorted(t.status_code for t in takes) == [200, 412], [t.text for t in takes]
    [won] = [t for t in takes if t.status_code == 200]
    [lost] = [t for t in takes if t.status_code == 412]
    assert (
        won.headers["etag"] != etag and won.headers["etag"] == (await api.get(url)).headers["etag"]
    )
    assert lost.headers["content-type"] == "application/problem+json"
    assert won.headers["etag"] in lost.json()["detail"]
    assert (await api.get(url)).json()["assignee"] == won.json()["assignee"]
    # The current version, any version, or none: as before.
    current = won.headers["etag"]
    for header in ({"If-Match": f'W/"x", {current}'}, {"If-Match": "*"}, {}):
        again = await api.patch(url, json={"action": "assign", "assignee": "cy"}, headers=header)
        assert again.status_code == 200, (header, again.text)
        current = again.headers["etag"]
    stale = await api.patch(url, json={"action": "complete"}, headers={"If-Match": etag})
    assert stale.status_code == 412 and (await api.get(url)).json()["status"] == "open"


async def test_with_a_crm_each_change_through_the_api_is_pushed_and_its_last_requeueable(
    pool: Pool, actions_db: str, clock: FixedClock
) -> None:
    # The CRM heard of new tasks only: its copy of a task done, cancelled or assigned in
    # Tierstream stayed open and unassigned for ever.
    settings = ActionsSettings(database_url=actions_db, api_keys=f"test:{KEY}",
                               crm_webhook_url="http://crm.example/hook",
                               webhook_secret="s" * 32)  # fmt: skip
    app = create_app(settings, pool=pool, clock=clock)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://actions", headers=AUTH) as api:  # fmt: skip
        [a] = await _items(api, customer_id="a")
        url = f"/v1/tasks/{a['id']}"
        assert (await api.patch(url, json={"action": "assign", "assignee": "ann"})).is_success
        clock.advance(timedelta(minutes=5))
        assert (await api.patch(url, json={"action": "complete"})).is_success
    pushes = await fetch(actions_db, "SELECT payload, status FROM actions.delivery"
                         " WHERE kind = 'task' ORDER BY id")  # fmt: skip
    events = [
        (p["payload"]["task_event"], p["payload"]["task"]["status"],
         p["payload"]["task"]["assignee"])
        for p in map(_json, pushes)
    ]  # fmt: skip
    assert events == [("assigned", "open", "ann"), ("completed", "done", "ann")]
    assert {p["status"] for p in pushes} == {"pending"}
    # Dead, only the push of the task as it is now goes out again.
    await fetch(actions_db, "UPDATE actions.delivery SET status = 'dead' WHERE kind = 'task'")
    async with pool.acquire() as conn:
        assert await queries.requeue_dead(conn, RequeueFilter("task")) == 1
    [again] = await fetch(actions_db, "SELECT payload FROM actions.delivery"
                          " WHERE kind = 'task' AND status = 'pending'")  # fmt: skip
    assert _json(again)["payload"]["task_event"] == "completed"


def _json(row: dict[str, Any]) -> dict[str, Any]:
    payload = row["payload"]
    return {**row, "payload": json.loads(payload) if isinstance(payload, str) else payload}


async def test_a_filter_given_twice_is_422_not_its_last_value(api: httpx.AsyncClient) -> None:
    for query in ("status=open&status=done", "customer_id=a&limit=5&customer_id=b"):
        response = await api.get(f"/v1/tasks?{query}")
        assert response.status_code == 422, response.text
        [error] = response.json()["errors"]
        assert error["type"] == "query_repeated", error
        assert error["field"] == f"query.{query.split('=')[0]}", error
    assert (await api.get("/v1/tasks?status=open&customer_id=a")).status_code == 200


async def test_a_misspelt_filter_is_422_not_every_task(api: httpx.AsyncClient) -> None:
    response = await api.get("/v1/tasks", params={"customer": "b"})
    assert response.status_code == 422, response.text
    [error] = response.json()["errors"]
    assert (error["field"], error["type"]) == ("query.customer", "query_unknown")
    # Without a key, a 401 first: the 422 told a stranger which parameters a route reads.
    keyless = await api.get("/v1/tasks", params={"customer": "b"}, headers={"authorization": ""})
    assert keyless.status_code == 401, keyless.text
    assert (await api.get("/v1/tasks", params={"customer_id": "b"})).status_code == 200


async def test_pages_follow_the_cursor_until_it_is_null(api: httpx.AsyncClient) -> None:
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        body = (await api.get("/v1/tasks", params=params)).json()
        assert len(body["items"]) <= 2
        seen += [t["customer_id"] for t in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert (seen, pages) == (CUSTOMERS, 3)


async def test_assign_complete_and_cancel_follow_the_allowed_transitions(
    api: httpx.AsyncClient, pool: Pool
) -> None:
    [a] = await _items(api, customer_id="a")
    url = f"/v1/tasks/{a['id']}"
    blank = await api.patch(url, json={"action": "assign", "assignee": "   "})  # was stored
    assert blank.status_code == 422, blank.text
    for invisible in ("\u200b", " \u200b\u2060 ", "\u00a0\u200d"):  # zero-width, no-break
        refused = await api.patch(url, json={"action": "assign", "assignee": invisible})
        assert refused.status_code == 422, (invisible, refused.text)
        [error] = refused.json()["errors"]
        assert error["field"] == "assignee" and "visible" in error["reason"], error
    assigned = await api.patch(url, json={"action": "assign", "assignee": " dana "})
    assert assigned.status_code == 200
    assert (assigned.json()["assignee"], assigned.json()["status"]) == ("dana", "open")
    done = (await api.patch(url, json={"action": "complete"})).json()
    assert done["status"] == "done" and done["completed_at"] == NOW.isoformat().replace(
        "+00:00", "Z"
    )
    for action in (
        {"action": "complete"},
        {"action": "cancel"},
        {"action": "assign", "assignee": "x"},
    ):
        refused = await api.patch(url, json=action)
        assert refused.status_code == 409, action
        assert refused.headers["content-type"] == "application/problem+json"
    assert (await api.get(url)).json()["status"] == "done"

    [b] = await _items(api, customer_id="b")
    cancelled = await api.patch(f"/v1/tasks/{b['id']}", json={"action": "cancel"})
    assert (cancelled.status_code, cancelled.json()["status"]) == (200, "cancelled")

    # With the first task done, a new gold trigger opens a new task (one open task at a time).
    await apply_changes(pool, [tier_change("g-a-2", "a", "value_tier", "silver", "gold")], now=NOW)
    assert [(t["status"], t["tier_change_id"]) for t in await _items(api, customer_id="a")] == [
        ("done", "g-a"), ("open", "g-a-2"),
    ]  # fmt: skip


async def test_requests_are_timed_by_route_template_method_and_status(
    api: httpx.AsyncClient,
) -> None:
    [task] = await _items(api, customer_id="b")
    await api.get(f"/v1/tasks/{task['id']}")
    await api.get("/v1/tasks/999")
    exposition = (await api.get("/metrics")).text
    name = "tierstream_actions_request_duration_seconds_count"
    one = {"route": "/v1/tasks/{task_id}", "method": "GET"}
    assert sample_value(exposition, name, **one, status="200") == 1, exposition
    assert sample_value(exposition, name, **one, status="404") == 1, exposition
    assert sample_value(exposition, name, route="/v1/tasks", method="GET", status="200") == 1


async def test_unknown_tasks_are_404(api: httpx.AsyncClient) -> None:
    for response in (
        await api.get("/v1/tasks/999"),
        await api.patch("/v1/tasks/999", json={"action": "complete"}),
    ):
        assert response.status_code == 404
        assert response.json()["status"] == 404


INVALID: list[tuple[str, str, dict[str, str], Any]] = [
    ("GET", "/v1/tasks", {"limit": "0"}, None),
    ("GET", "/v1/tasks", {"limit": "501"}, None),
    ("GET", "/v1/tasks", {"status": "bogus"}, None),
    ("GET", "/v1/tasks", {"overdue": "maybe"}, None),
    ("GET", "/v1/tasks", {"cursor": "not-a-cursor"}, None),
    ("GET", "/v1/tasks", {"customer_id": ""}, None),
    ("GET", "/v1/tasks", {"customer_id": "a\x00b"}, None),
    ("GET", "/v1/alerts", {"customer_id": "\x00"}, None),
    ("GET", "/v1/sequences/enrollments", {"cursor": "Zm9v"}, None),
    ("GET", "/v1/alerts", {"limit": "-1"}, None),
    ("GET", "/v1/tasks/abc", {}, None),
    ("GET", "/v1/tasks/0", {}, None),
    # int() reads these as task 1 and 10: one task answered to many paths.
    ("GET", "/v1/tasks/+1", {}, None),
    ("GET", "/v1/tasks/%201", {}, None),
    ("GET", "/v1/tasks/1_0", {}, None),
    ("PATCH", "/v1/tasks/%D9%A1", {}, {"action": "complete"}),
    ("GET", "/v1/tasks/99999999999999999999", {}, None),
    ("PATCH", "/v1/tasks/1", {}, {"action": "fly"}),
    ("PATCH", "/v1/tasks/1", {}, {"action": "assign"}),
    ("PATCH", "/v1/tasks/1", {}, {"action": "assign", "assignee": "x\x00"}),
    ("PATCH", "/v1/tasks/1", {}, {"action": "complete", "note": "extra"}),
]


async def test_invalid_requests_are_422_problems(api: httpx.AsyncClient) -> None:
    # One test, many cases: each case needs no state of its own, only the seeded database.
    for method, path, params, body in INVALID:
        kwargs: dict[str, Any] = {"params": params}
        if isinstance(body, str):
            kwargs.update(content=body, headers={"content-type": "application/json"})
        elif body is not None:
            kwargs["json"] = body
        response = await api.request(method, path, **kwargs)
        case = f"{method} {path} {params} {body}"
        assert response.status_code == 422, f"{case}: {response.text}"
        assert response.headers["content-type"] == "application/problem+json", case


async def test_errors_name_the_body_field_and_a_body_that_is_not_json_is_a_400(
    api: httpx.AsyncClient,
) -> None:
    for body, field in (
        ({"action": "fly"}, "action"),
        ({"action": "assign"}, "assignee"),  # not `assign.assignee`: no such key was sent
        ({"action": "assign", "assignee": 5}, "assignee"),
        ({"action": "complete", "note": "extra"}, "note"),
    ):
        response = await api.patch("/v1/tasks/1", json=body)
        assert response.status_code == 422, response.text
        assert [e["field"] for e in response.json()["errors"]] == [field], body
    for path, method in (("/v1/tasks/1", "PATCH"), ("/v1/deliveries/requeue", "POST")):
        for text in ("not json", '{"action":'):
            response = await api.request(
                method, path, content=text, headers={"content-type": "application/json"}
            )
            assert response.status_code == 400, response.text
            problem = response.json()
            assert problem["title"] == "Malformed JSON" and "at byte" in problem["detail"]


ROUTES = [
    ("GET", "/v1/tasks"), ("GET", "/v1/tasks/1"), ("PATCH", "/v1/tasks/1"),
    ("GET", "/v1/sequences/enrollments"), ("GET", "/v1/alerts"),
]  # fmt: skip


async def test_every_route_needs_a_valid_api_key(api: httpx.AsyncClient) -> None:
    api.headers.pop("Authorization")
    for auth in (None, "Bearer wrong-key", f"Basic {KEY}", "Bearer "):
        headers = {"Authorization": auth} if auth else {}
        for method, path in ROUTES:
            response = await api.request(method, path, headers=headers, json={"action": "complete"})
            assert response.status_code == 401, (auth, method, path)
            assert response.headers["www-authenticate"].startswith("Bearer")
    assert (await api.get("/v1/tasks", headers=AUTH)).status_code == 200


async def test_enrolments_and_alerts_list_per_customer(api: httpx.AsyncClient) -> None:
    enrolments = (await api.get("/v1/sequences/enrollments", params={"customer_id": "a"})).json()
    [vip] = enrolments["items"]
    assert (vip["sequence"], vip["status"], vip["exit_reason"]) == ("vip_welcome", "active", None)
    assert [(s["index"], s["name"], s["status"]) for s in vip["steps"]] == [
        (0, "welcome_note", "scheduled"), (1, "check_in", "scheduled"),
    ]  # fmt: skip
    assert vip["steps"][1]["due_at"] == (NOW + 7 * DAY).isoformat().replace("+00:00", "Z")
    alerts = (await api.get("/v1/alerts", params={"customer_id": "b"})).json()["items"]
    assert [(a["playbook"], a["audience"], a["channel"], a["status"]) for a in alerts] == [
        ("at_risk", "care", "log", "pending")
    ]
