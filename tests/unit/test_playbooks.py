"""plan_actions against every row of DOMAIN.md's playbook table (the shipped defaults)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.contracts import TierChanged
from shared.domain.playbook_templates import Escaping, render_body
from shared.domain.playbooks import (
    AlertRequest,
    Channel,
    EnrolRequest,
    ExitRequest,
    Playbooks,
    Priority,
    TaskRequest,
    default_playbooks_path,
    load_playbooks,
    longest_sequence,
    parse_playbooks,
    plan_actions,
    plan_goal_exits,
)

AT = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
DAY = timedelta(days=1)


@pytest.fixture(scope="module")
def defaults() -> Playbooks:
    return load_playbooks(default_playbooks_path())


def change(dimension: str, from_: str | None, to: str, **extra: Any) -> TierChanged:
    data: dict[str, Any] = {
        "id": "chg-1",
        "customer_id": "c-42",
        "dimension": dimension,
        "from": from_,
        "to": to,
        "cause": "event",
        "rule": "r",
        "features": {},
        "rules_version": "v1",
        "occurred_at": AT,
        "emitted_at": AT,
        "attributes": {"email": "ann@example.com"},
    }
    return TierChanged.model_validate({**data, **extra})


def summary(requests: list[Any]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for r in requests:
        match r:
            case TaskRequest():
                out.append(("task", r.playbook, r.queue, r.priority.value, str(r.due_in)))
            case AlertRequest():
                out.append(("alert", r.playbook, r.channel.value, r.audience))
            case EnrolRequest():
                out.append(("enrol", r.playbook, r.sequence))
            case ExitRequest():
                out.append(("exit", r.sequence, r.reason))
    return out


@pytest.mark.parametrize("from_", ["silver", "bronze", "none", None])
def test_value_tier_to_gold_opens_a_senior_task_alerts_vip_and_enrols_in_vip_welcome(
    defaults: Playbooks, from_: str | None
) -> None:
    assert summary(plan_actions(change("value_tier", from_, "gold"), defaults).requests) == [
        ("task", "gold_upgrade", "senior-sales", "high", "2 days, 0:00:00"),
        ("alert", "gold_upgrade", "webhook", "vip"),
        ("enrol", "gold_upgrade", "vip_welcome"),
    ]


def test_lifecycle_to_at_risk_sends_care_email_opens_callback_task_and_starts_win_back(
    defaults: Playbooks,
) -> None:
    assert summary(
        plan_actions(change("lifecycle_stage", "established", "at_risk"), defaults).requests
    ) == [
        ("exit", "welcome", "lifecycle_stage:at_risk"),
        ("alert", "at_risk", "email", "care"),
        ("task", "at_risk", "support", "high", "1 day, 0:00:00"),
        ("enrol", "at_risk", "win_back"),
    ]


def test_lifecycle_to_new_enrols_in_the_14_day_welcome(defaults: Playbooks) -> None:
    requests = plan_actions(change("lifecycle_stage", "lead", "new"), defaults).requests
    assert summary(requests) == [("enrol", "new_customer", "welcome")]
    enrol = requests[0]
    assert isinstance(enrol, EnrolRequest)
    assert [(s.name, s.offset) for s in enrol.steps] == [
        ("quick_start", 1 * DAY),
        ("best_practices", 3 * DAY),
        ("faq", 7 * DAY),
        ("check_in", 14 * DAY),
    ]
    assert {s.channel for s in enrol.steps} == {Channel.EMAIL}
    assert {s.to for s in enrol.steps} == {"ann@example.com"}


def test_lifecycle_to_churned_alerts_retention_and_enrols_in_win_back(defaults: Playbooks) -> None:
    assert summary(
        plan_actions(change("lifecycle_stage", "at_risk", "churned"), defaults).requests
    ) == [
        ("exit", "welcome", "lifecycle_stage:churned"),
        ("alert", "churned", "webhook", "retention"),
        ("enrol", "churned", "win_back"),
    ]


def test_win_back_steps_are_day_0_care_day_3_offer_day_7_survey_and_exit_on_purchase(
    defaults: Playbooks,
) -> None:
    enrol = plan_actions(change("lifecycle_stage", "established", "at_risk"), defaults).requests[-1]
    assert isinstance(enrol, EnrolRequest)
    assert [(s.name, s.offset) for s in enrol.steps] == [
        ("care_message", 0 * DAY),
        ("offer", 3 * DAY),
        ("survey", 7 * DAY),
    ]
    assert enrol.goal_events == ("purchase",)
    assert plan_goal_exits("purchase", defaults) == [ExitRequest("win_back", "goal:purchase")]
    assert plan_goal_exits("login", defaults) == []


@pytest.mark.parametrize("to", ["silver", "bronze", "none"])
def test_value_tier_down_from_gold_opens_a_review_task_and_ends_vip_welcome(
    defaults: Playbooks, to: str
) -> None:
    requests = plan_actions(change("value_tier", "gold", to), defaults).requests
    assert summary(requests) == [
        ("exit", "vip_welcome", f"value_tier:{to}"),
        ("task", "gold_downgrade", "account-management", "normal", "3 days, 0:00:00"),
    ]
    task = requests[1]
    assert (
        isinstance(task, TaskRequest)
        and task.title == f"Account manager: review c-42, down from gold to {to}"
    )


@pytest.mark.parametrize(
    ("dimension", "from_", "to"),
    [
        ("value_tier", "bronze", "silver"),
        ("value_tier", None, "bronze"),
        ("activity_level", "active", "inactive"),
        ("lifecycle_stage", "new", "established"),
        ("lifecycle_stage", None, "lead"),
    ],
)
def test_changes_without_a_playbook_row_plan_nothing(
    defaults: Playbooks, dimension: str, from_: str | None, to: str
) -> None:
    assert plan_actions(change(dimension, from_, to), defaults).requests == []


@pytest.mark.parametrize(
    ("from_", "to"),
    [("at_risk", "reactivated"), ("at_risk", "established"), ("churned", "established")],
)
def test_leaving_at_risk_or_churned_ends_win_back(defaults: Playbooks, from_: str, to: str) -> None:
    # Also when no purchase ends it: a late event withdrew the change that enrolled them.
    assert plan_actions(change("lifecycle_stage", from_, to), defaults).requests == [
        ExitRequest("win_back", f"lifecycle_stage:{to}")
    ]


def test_message_bodies_escape_customer_fields_but_titles_do_not(defaults: Playbooks) -> None:
    requests = plan_actions(
        change("value_tier", "silver", "gold", customer_id="<b>&co"), defaults
    ).requests
    task, alert = requests[0], requests[1]
    assert isinstance(task, TaskRequest) and isinstance(alert, AlertRequest)
    assert "<b>&co" in task.title
    assert "&lt;b&gt;&amp;co" in alert.text and "<b>" not in alert.text


def test_webhook_text_escapes_values_as_slack_does_and_email_bodies_as_html(
    defaults: Playbooks,
) -> None:
    # Slack decodes only &amp; &lt; &gt;: the HTML quote entities showed as "O&#39;Brien".
    name = """O'Brien "Bob" <!channel> <https://evil.example|click> & co"""
    gold = plan_actions(change("value_tier", "silver", "gold", customer_id=name), defaults)
    [alert] = [r for r in gold.requests if isinstance(r, AlertRequest)]
    assert alert.channel is Channel.WEBHOOK
    assert (
        """O'Brien "Bob" &lt;!channel&gt; &lt;https://evil.example|click&gt; &amp; co"""
        in alert.text
    )
    assert "<!channel>" not in alert.text and "<https" not in alert.text  # no ping, no link
    assert alert.text.startswith(":star: Customer ")  # the author's own text is left alone
    risk = plan_actions(
        change("lifecycle_stage", "established", "at_risk", customer_id=name,
               attributes={"email": "ob@example.com", "name": name}),
        defaults,
    ).requests  # fmt: skip
    [care] = [r for r in risk if isinstance(r, AlertRequest)]
    [win_back] = [r for r in risk if isinstance(r, EnrolRequest)]
    html = "O&#39;Brien &#34;Bob&#34; &lt;!channel&gt;"  # HTML e-mail: fully escaped
    assert care.channel is Channel.EMAIL and html in care.text
    assert {s.channel for s in win_back.steps} == {Channel.EMAIL}
    assert all(html in s.text for s in win_back.steps)


STEP_CHANNELS = """
sequences:
  s:
    steps:
      - {name: a, offset: 0d, channel: webhook, text: "{{ customer.id }}"}
      - {name: b, offset: 0d, channel: email, text: "{{ customer.id }}"}
      - {name: c, offset: 0d, channel: log, text: "{{ customer.id }}"}
playbooks:
  - {name: p, when: {dimension: value_tier}, actions: [{kind: enrol, sequence: s}]}
"""


def test_each_step_text_is_escaped_for_its_own_channel() -> None:
    books = parse_playbooks(STEP_CHANNELS, source="test")
    [enrol] = plan_actions(
        change("value_tier", None, "gold", customer_id="O'B <x>"), books
    ).requests
    assert isinstance(enrol, EnrolRequest)
    assert [s.text for s in enrol.steps] == ["O'B &lt;x&gt;", "O&#39;B &lt;x&gt;", "O'B &lt;x&gt;"]


def test_a_missing_email_leaves_the_step_without_a_recipient(defaults: Playbooks) -> None:
    enrol = plan_actions(
        change("lifecycle_stage", "lead", "new", attributes={}), defaults
    ).requests[0]
    assert isinstance(enrol, EnrolRequest)
    assert {s.to for s in enrol.steps} == {None}


CUSTOM = """
playbooks:
  - name: focus_new
    when:
      dimension: lifecycle_stage
      to: new
      cause: [event]
      if:
        all:
          - {attribute: industry, in: [retail, media]}
          - {feature: last_order_value, between: [50000, 100000]}
    actions:
      - kind: task
        title: "New potential {{ customer.id }} ({{ customer.industry }})"
        queue: sales
        due_in: 1d12h
        assignee: dana
"""


@pytest.mark.parametrize(
    ("industry", "value", "cause", "planned"),
    [
        ("retail", "75000.00", "event", True),
        ("media", 50000, "event", True),
        ("banking", "75000.00", "event", False),
        ("retail", "100000.01", "event", False),
        ("retail", "75000.00", "time", False),
        (None, "75000.00", "event", False),
    ],
)
def test_conditions_read_attributes_features_and_cause(
    industry: str | None, value: Any, cause: str, planned: bool
) -> None:
    books = parse_playbooks(CUSTOM, source="custom.yaml")
    attrs = {"industry": industry} if industry else {}
    c = change(
        "lifecycle_stage",
        "lead",
        "new",
        cause=cause,
        attributes=attrs,
        features={"last_order_value": value},
    )
    requests = plan_actions(c, books).requests
    assert bool(requests) is planned
    if planned:
        task = requests[0]
        assert isinstance(task, TaskRequest)
        assert (task.queue, task.priority, task.due_in, task.assignee) == (
            "sales",
            Priority.NORMAL,
            timedelta(days=1, hours=12),
            "dana",
        )
        assert task.title == f"New potential c-42 ({industry})"


def test_the_longest_sequence_is_its_last_step_plus_a_day_when_quiet_hours_may_defer_it(
    defaults: Playbooks,
) -> None:
    assert longest_sequence(defaults.sequences) == 14 * DAY  # the welcome's day-14 check-in
    quiet = parse_playbooks(
        "sequences:\n  s:\n    quiet_hours: {start: '21:00', end: '08:00'}\n"
        "    steps: [{name: a, offset: 2d, channel: log, text: hi},"
        " {name: b, offset: 20d, channel: log, text: hi}]\n"
        "playbooks:\n  - name: p\n    when: {dimension: value_tier, to: gold}\n"
        "    actions: [{kind: enrol, sequence: s}]\n",
        source="inline",
    )
    assert longest_sequence(quiet.sequences) == 21 * DAY
    assert longest_sequence({}) == timedelta(0)


def _care_subject(subject: str) -> Playbooks:
    """The shipped playbooks with the at-risk care alert's subject replaced."""
    text = default_playbooks_path().read_text(encoding="utf-8")
    old = 'subject: "Customer {{ customer_id }} is at risk"'
    assert old in text
    return parse_playbooks(text.replace(old, f'subject: "{subject}"'), source="edited.yaml")


@pytest.mark.parametrize(
    ("segment", "kinds", "errors"),
    [
        ("smb", ["exit", "alert", "task", "enrol"], []),
        (
            7,
            ["exit", "task", "enrol"],
            ["subject: UndefinedError: 'int object' has no attribute 'title'"],
        ),
    ],
)
def test_an_alert_template_failing_on_the_data_costs_only_that_alert(
    segment: object, kinds: list[str], errors: list[str]
) -> None:
    books = _care_subject("{{ customer.segment.title() }} customer at risk")
    c = change("lifecycle_stage", "new", "at_risk", attributes={"segment": segment})
    plan = plan_actions(c, books)
    assert [r.kind for r in plan.requests] == kinds
    assert summary(plan.requests)[0] == ("exit", "welcome", "lifecycle_stage:at_risk")
    assert [(f.playbook, f.action, f.kind, f.error, f.fallback) for f in plan.failures] == [
        ("at_risk", 0, "alert", error, False) for error in errors
    ]


BROKEN = """
sequences:
  nudge:
    steps:
      - {name: hello, offset: 0d, channel: log, text: "Hi"}
      - {name: ratio, offset: 1d, channel: log, text: "{{ 100 / customer.visits }} per visit"}
playbooks:
  - name: lapsed
    when: {dimension: lifecycle_stage, to: at_risk}
    actions:
      - kind: task
        title: "Call {{ customer.name.upper() }}"
        queue: support
        priority: urgent
        due_in: 4h
        assignee: kim
      - {kind: enrol, sequence: nudge}
      - {kind: alert, channel: log, audience: ops, text: "{{ customer_id }} lapsed"}
"""


def test_a_failing_task_title_still_opens_the_task_with_a_title_naming_the_failure() -> None:
    books = parse_playbooks(BROKEN, source="broken.yaml")
    plan = plan_actions(
        change("lifecycle_stage", "new", "at_risk", attributes={"name": 7, "visits": 4}), books
    )
    task, enrol, alert = plan.requests
    assert isinstance(task, TaskRequest) and isinstance(enrol, EnrolRequest)
    assert isinstance(alert, AlertRequest) and alert.text == "c-42 lapsed"
    assert (task.playbook, task.queue, task.priority, task.due_in, task.assignee) == (
        "lapsed",
        "support",
        Priority.URGENT,
        timedelta(hours=4),
        "kim",
    )
    error = "title: UndefinedError: 'int object' has no attribute 'upper'"
    assert task.title == f"lapsed: task for customer c-42 (template failed, {error})"
    assert [(f.kind, f.action, f.error, f.fallback) for f in plan.failures] == [
        ("task", 0, error, True)
    ]


def test_a_failing_sequence_step_leaves_out_the_enrolment_and_nothing_else() -> None:
    books = parse_playbooks(BROKEN, source="broken.yaml")
    c = change("lifecycle_stage", "new", "at_risk", attributes={"name": "ann", "visits": 0})
    plan = plan_actions(c, books)
    assert [r.kind for r in plan.requests] == ["task", "alert"]
    assert [(f.playbook, f.action, f.kind, f.error) for f in plan.failures] == [
        ("lapsed", 1, "enrol", "step ratio text: ZeroDivisionError: division by zero")
    ]


@pytest.mark.parametrize(
    ("source", "slack"),
    [
        ("<!here> {{ v }}", "<!here> O'B &amp; &lt;!channel&gt;"),  # the author's text is kept
        ("{{ v|upper }}", "O'B &amp; &lt;!CHANNEL&gt;"),
        ("{% macro m(x) %}*{{ x }}*{% endmacro %}{{ m(v) }}", "*O'B &amp; &lt;!channel&gt;*"),
        ("{% set t %}[{{ v }}]{% endset %}{{ t }}", "[O'B &amp; &lt;!channel&gt;]"),
        ("{{ missing }}|{{ none }}", "|None"),
    ],
)
def test_slack_escaping_escapes_each_value_once_however_it_is_reached(
    source: str, slack: str
) -> None:
    context = {"v": "O'B & <!channel>", "none": None}
    assert render_body(source, context, what="t", escaping=Escaping.SLACK) == slack
    html = slack.replace("'", "&#39;")  # the same, quotes escaped too
    assert render_body(source, context, what="t", escaping=Escaping.HTML) == html
