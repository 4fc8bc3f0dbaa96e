"""Small parts of the actions service: back-off, task transitions, cursors, signing, e-mail,
decoding poison, settings, and refusing to start on an invalid playbooks file."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from services.actions.api import decode_cursor, encode_cursor
from services.actions.channels import (
    Delivery,
    PermanentDeliveryError,
    SmtpChannel,
    SmtpConfig,
    sign,
)
from services.actions.decoding import decode
from services.actions.deliveries import backoff_s
from services.actions.main import run
from services.actions.settings import ActionsSettings
from services.actions.tasks import TaskCommand, TaskStatus, next_status
from shared.clock import FixedClock
from shared.domain.playbooks import default_playbooks_path, load_playbooks, parse_playbooks
from shared.domain.rules import default_rules_path
from shared.http import ProblemError
from shared.kafka import CHANGE_SEQ_HEADER
from shared.topics import Topics

NOW = datetime(2026, 5, 1, 8, tzinfo=UTC)
TOPICS = Topics("ns")


def test_backoff_doubles_up_to_the_cap_with_half_of_it_random() -> None:
    assert [backoff_s(a, base=1, cap=10, jitter=1.0) for a in (1, 2, 3, 4, 5)] == [1, 2, 4, 8, 10]
    assert [backoff_s(a, base=1, cap=10, jitter=0.0) for a in (1, 2, 3, 4, 5)] == [0.5, 1, 2, 4, 5]


def test_backoff_past_the_1024th_attempt_stays_at_the_cap() -> None:
    # 2.0 ** 1024 overflows a float: ACTIONS_MAX_ATTEMPTS above 1024 must not break retries.
    for attempt in (1024, 1025, 2000, 2**31 - 1, 10**100):
        assert backoff_s(attempt, base=2.0, cap=600.0, jitter=0.5) == 450.0


@given(
    attempt=st.integers(min_value=-(10**6), max_value=10**30),
    base=st.floats(min_value=1e-3, max_value=1e6),
    cap=st.floats(min_value=1e-3, max_value=1e9),
    jitter=st.floats(min_value=0.0, max_value=1.0),
)
def test_backoff_of_any_attempt_lies_between_half_the_delay_and_the_cap(
    attempt: int, base: float, cap: float, jitter: float
) -> None:
    delay = min(cap, base * 2.0 ** min(max(0, attempt - 1), 64))
    assert delay / 2 <= backoff_s(attempt, base=base, cap=cap, jitter=jitter) <= delay
    later = backoff_s(attempt + 1, base=base, cap=cap, jitter=jitter)
    assert later >= backoff_s(attempt, base=base, cap=cap, jitter=jitter)  # never shrinks


@pytest.mark.parametrize(
    ("status", "command", "after"),
    [
        (TaskStatus.OPEN, TaskCommand.ASSIGN, TaskStatus.OPEN),
        (TaskStatus.OPEN, TaskCommand.COMPLETE, TaskStatus.DONE),
        (TaskStatus.OPEN, TaskCommand.CANCEL, TaskStatus.CANCELLED),
        *[(s, c, None) for s in (TaskStatus.DONE, TaskStatus.CANCELLED) for c in TaskCommand],
    ],
)
def test_only_open_tasks_can_be_assigned_completed_or_cancelled(
    status: TaskStatus, command: TaskCommand, after: TaskStatus | None
) -> None:
    assert next_status(status, command) is after


def test_cursors_round_trip_and_foreign_ones_are_refused() -> None:
    assert decode_cursor(encode_cursor(42)) == 42
    assert decode_cursor(None) is None
    foreign = [f"id:{n}" for n in (" 7", "+7", "7_0", "\u0667", "7 ", "0" * 20, 2**63)]
    for bad in ("", "abc", encode_cursor(1)[:-1] + "!", "aWQ6LTE", "eDox",  # id:-1, x:1
                *(base64.urlsafe_b64encode(f.encode()).decode() for f in foreign)):  # fmt: skip
        with pytest.raises(ProblemError) as refused:
            decode_cursor(bad)
        assert [e["field"] for e in refused.value.errors or []] == ["query.cursor"], bad
    assert decode_cursor(encode_cursor(2**63 - 1)) == 2**63 - 1


def _delivery(**overrides: Any) -> Delivery:
    fields: dict[str, Any] = {
        "id": 1, "key": "k-1", "kind": "step", "customer_id": "c", "channel": "email",
        "recipient": "c@example.com", "subject": "Hello", "body": "Tom &amp; Jerry",
        "payload": {"sequence": "welcome"},
    }  # fmt: skip
    return Delivery(**{**fields, **overrides})


def test_webhook_bodies_are_slack_text_plus_details_signed_over_the_raw_bytes() -> None:
    body = _delivery(kind="alert", audience="vip").webhook_body()
    document = json.loads(body)
    assert (document["text"], document["audience"], document["idempotency_key"]) == (
        "Tom &amp; Jerry", "vip", "k-1")  # fmt: skip
    expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert sign(b"s3cret", body) == f"sha256={expected}"


def test_emails_carry_the_key_as_message_id_and_need_a_recipient() -> None:
    channel = SmtpChannel(SmtpConfig("localhost", 25, "from@example.com"))
    message = channel.message(_delivery())
    assert message["Message-ID"] == "<k-1@tierstream>" and message["To"] == "c@example.com"
    plain, rich = message.iter_parts()
    assert plain.get_content().strip() == "Tom & Jerry"
    assert "<p>Tom &amp; Jerry</p>" in rich.get_content()
    with pytest.raises(PermanentDeliveryError):
        channel.message(_delivery(recipient=None))
    assert (
        channel.message(_delivery(recipient="Tom <t@example.com>"))["To"] == "Tom <t@example.com>"
    )


def test_emails_are_dated_by_the_clock_in_utc_as_rfc_5322_requires() -> None:
    # A message without `Date:` is invalid (RFC 5322 3.6): some servers reject it or add
    # their own, and spam filters score it.
    clock = FixedClock(datetime(2026, 5, 1, 10, 30, tzinfo=timezone(timedelta(hours=2))))
    channel = SmtpChannel(SmtpConfig("localhost", 25, "from@example.com"), clock)
    message = channel.message(_delivery())
    assert message["Date"] == "Fri, 01 May 2026 08:30:00 +0000"
    assert message["Message-ID"] == "<k-1@tierstream>"  # present, and the same on a resend
    clock.advance(timedelta(minutes=5))  # a retry is dated when it is sent
    assert channel.message(_delivery())["Date"] == "Fri, 01 May 2026 08:35:00 +0000"
    before = datetime.now(UTC).replace(microsecond=0)
    dated = SmtpChannel(SmtpConfig("localhost", 25, "f@example.com")).message(_delivery())["Date"]
    assert before <= parsedate_to_datetime(str(dated)) <= datetime.now(UTC)  # the wall clock


@pytest.mark.parametrize(
    "recipient",
    [
        "a@example.com, b@example.com", "a@x; b@y", "nobody", "<>",
        # one address to the check, but a mail client decodes the name into two more
        "=?utf-8?q?ok=40x=2Ecom=2C_evil=40e=2Ecom?= <z@z.com>",
    ],
)  # fmt: skip
def test_an_email_goes_to_exactly_one_address(recipient: str) -> None:
    channel = SmtpChannel(SmtpConfig("localhost", 25, "from@example.com"))
    with pytest.raises(PermanentDeliveryError, match="is not one e-mail address"):
        channel.message(_delivery(recipient=recipient))


def test_a_recipients_name_is_written_as_one_quoted_name() -> None:
    channel = SmtpChannel(SmtpConfig("localhost", 25, "from@example.com"))
    message = channel.message(_delivery(recipient='"Doe, John" <j@example.com>'))
    assert str(message["To"]) == '"Doe, John" <j@example.com>'
    assert [a.addr_spec for a in message["To"].addresses] == ["j@example.com"]


def _record(topic: str, value: bytes) -> SimpleNamespace:
    return SimpleNamespace(topic=topic, partition=0, offset=0, key=None, value=value, headers=[])


def _change(**overrides: Any) -> bytes:
    data = {
        "id": "1", "customer_id": "c", "dimension": "value_tier", "from": "silver", "to": "gold",
        "cause": "event", "rule": "r", "features": {}, "rules_version": "v",
        "occurred_at": "2026-05-01T08:00:00Z", "emitted_at": "2026-05-01T08:00:00Z",
    }  # fmt: skip
    return json.dumps({**data, **overrides}).encode()


def _purchase(**overrides: Any) -> bytes:
    data = {"type": "purchase", "event_id": "e", "customer_id": "c", "order_id": "o",
            "amount": "10", "currency": "EUR", "occurred_at": "2026-05-01T08:00:00Z"}  # fmt: skip
    return json.dumps({**data, **overrides}).encode()


def test_decoding_plans_good_records_and_names_what_is_wrong_with_the_rest() -> None:
    books = load_playbooks(default_playbooks_path())
    records = [
        _record(TOPICS.tier_changed, _change()),
        _record(TOPICS.tier_changed, b"{not json"),
        _record(TOPICS.tier_changed, _change(dimension="mood")),
        _record(TOPICS.tier_changed, _change(customer_id="c\u0000")),
        _record(TOPICS.tier_changed, _change(occurred_at="2026-05-01T08:00:00")),
        _record(
            TOPICS.tier_changed, _change().replace(b'"features": {}', b'"features": {"x": NaN}')
        ),
        _record(TOPICS.purchases, _purchase()),
        _record(TOPICS.purchases, _purchase(refund_of="o-0")),
        _record(TOPICS.purchases, _purchase(type="login", channel="web", amount=None)),
    ]
    out = decode(records, TOPICS, books)
    assert [c.change.id for c in out.changes] == ["1"] and len(out.changes[0].requests) == 3
    assert [(g.customer_id, g.occurred_at) for g in out.goals] == [("c", NOW)]
    assert out.ignored == 1  # a refund is not "bought again"
    errors = [p.error for p in out.poison]
    assert len(errors) == 6
    assert "dimension" in errors[1] and "NUL" in errors[2]
    assert "occurred_at" in errors[3] and "timezone" in errors[3].replace("time zone", "timezone")
    assert "NaN" in errors[4]


def test_a_changes_seq_comes_from_its_header_and_a_malformed_one_is_poison() -> None:
    books = load_playbooks(default_playbooks_path())
    with_seq = _record(TOPICS.tier_changed, _change(id="s"))
    with_seq.headers = [(CHANGE_SEQ_HEADER, b"42")]
    malformed = _record(TOPICS.tier_changed, _change(id="m"))
    malformed.headers = [(CHANGE_SEQ_HEADER, b"forty-two")]
    out = decode([with_seq, _record(TOPICS.tier_changed, _change(id="n")), malformed], TOPICS,
                 books)  # fmt: skip
    assert [(c.change.id, c.seq) for c in out.changes] == [("s", 42), ("n", None)]
    assert len(out.poison) == 1 and "forty-two" in out.poison[0].error


def test_times_without_a_utc_equivalent_are_poison_not_a_stalled_partition() -> None:
    # Postgres would refuse them inside the batch's transaction, on every retry.
    books = load_playbooks(default_playbooks_path())
    records = [
        _record(TOPICS.tier_changed, _change(occurred_at="0001-01-01T00:00:00+01:00")),
        _record(TOPICS.purchases, _purchase(occurred_at="0001-01-01T00:00:00+01:00")),
        _record(TOPICS.tier_changed, _change(occurred_at="0001-01-01T01:00:00.000001+01:00")),
        _record(TOPICS.purchases, _purchase(occurred_at="0001-01-01T00:00:00Z")),  # -infinity
    ]
    out = decode(records, TOPICS, books)
    first, second, third = (p.error for p in out.poison)
    assert first == "ValueError: a timestamp lies outside years 1-9999 in UTC"
    assert "occurred_at" in second and "after 0001-01-01T00:00:00Z" in second
    assert "occurred_at" in third and "after 0001-01-01T00:00:00Z" in third
    assert len(out.changes) == 1


@pytest.mark.parametrize("quiet", [False, True])
def test_a_change_whose_steps_quiet_hours_defer_past_9999_is_poison(quiet: bool) -> None:
    # Applying it would raise OverflowError in the batch, on every retry. Quiet hours in
    # UTC+14 move the day-7 step of a change decided on 9999-12-24 12:00 UTC into year 10000.
    text = default_playbooks_path().read_text(encoding="utf-8")
    if quiet:
        text = text.replace(
            "description: Welcome to the gold tier; ends if the customer leaves gold.",
            "description: Welcome to gold.\n"
            '    quiet_hours: {start: "21:00", end: "08:00", timezone: Pacific/Kiritimati}',
        )
    books = parse_playbooks(text, source="edited.yaml")
    decided = "9999-12-24T12:00:00Z"
    out = decode([_record(TOPICS.tier_changed, _change(emitted_at=decided))], TOPICS, books)
    if not quiet:  # due 9999-12-31 12:00 UTC: storable
        assert (len(out.changes), out.poison) == (1, [])
        return
    assert out.changes == []
    assert [p.error for p in out.poison] == [
        "ValueError: step check_in of sequence vip_welcome would fall due outside years 1-9999"
        " in UTC"
    ]


def test_a_template_failing_on_a_change_is_not_poison_its_exits_and_other_actions_apply() -> None:
    text = (
        default_playbooks_path()
        .read_text(encoding="utf-8")
        .replace(
            'subject: "Customer {{ customer_id }} is at risk"',
            'subject: "{{ customer.segment.title() }} customer at risk"',
        )
    )
    books = parse_playbooks(text, source="edited.yaml")
    at_risk = {"dimension": "lifecycle_stage", "from": "new", "to": "at_risk"}
    records = [
        _record(TOPICS.tier_changed, _change(**at_risk, attributes={"segment": "smb"})),
        _record(TOPICS.tier_changed, _change(**at_risk, id="2", attributes={"segment": 7})),
    ]
    out = decode(records, TOPICS, books)
    assert out.poison == []
    good, bad = (c.plan for c in out.changes)
    assert [r.kind for r in good.requests] == ["exit", "alert", "task", "enrol"]
    assert good.failures == []
    assert [r.kind for r in bad.requests] == ["exit", "task", "enrol"]
    assert [(f.playbook, f.kind, f.error) for f in bad.failures] == [
        ("at_risk", "alert", "subject: UndefinedError: 'int object' has no attribute 'title'")
    ]


def test_a_webhook_url_without_a_secret_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACTIONS_WEBHOOK_URL", "http://hooks.example.com/x")
    with pytest.raises(ValidationError, match="ACTIONS_WEBHOOK_SECRET is required"):
        ActionsSettings()
    monkeypatch.setenv("ACTIONS_WEBHOOK_SECRET", "s")
    monkeypatch.setenv("ACTIONS_API_KEYS", "ops:k1")
    monkeypatch.setenv("TIERSTREAM_API_KEYS", "all:k2")
    settings = ActionsSettings()
    assert (settings.port, settings.api_key_map()) == (8082, {"k1": "ops"})


async def test_the_service_refuses_to_start_with_an_invalid_playbooks_file(tmp_path: Path) -> None:
    broken = tmp_path / "playbooks.yaml"
    broken.write_text(
        "playbooks:\n  - name: x\n    when: {dimension: value_tier}\n    actions: []\n"
    )
    settings = ActionsSettings(api_keys="k", playbooks_file=broken)
    with pytest.raises(SystemExit, match=r"playbooks.yaml:\d+: playbook 'x', field actions"):
        await run(settings)


async def test_the_service_refuses_to_start_on_a_misspelt_template_filter(tmp_path: Path) -> None:
    # Before: the template's TemplateAssertionError went through as a traceback.
    books = tmp_path / "playbooks.yaml"
    text = default_playbooks_path().read_text()
    books.write_text(text.replace("{{ customer_id }} is at risk", "{{ customer_id | upperr }}"))
    settings = ActionsSettings(api_keys="k", playbooks_file=books)
    with pytest.raises(SystemExit) as refused:
        await run(settings)
    line = _line_with(books, "{{ customer_id | upperr }}")
    assert str(refused.value) == (
        f"actions: invalid playbooks file: {books}:{line}: template 'care_alert', field subject:"
        " unknown filter 'upperr' (did you mean 'upper'?)"
    )


async def test_the_service_refuses_to_start_when_a_playbook_names_a_class_the_rules_lack(
    tmp_path: Path,
) -> None:
    # Before: it started, and the playbook waited for ever for a change to `goldd`.
    typo = tmp_path / "playbooks.yaml"
    typo.write_text(
        default_playbooks_path()
        .read_text()
        .replace("value_tier, to: gold}", "value_tier, to: goldd}")
    )
    settings = ActionsSettings(api_keys="k", playbooks_file=typo)
    with pytest.raises(SystemExit) as refused:
        await run(settings)
    assert str(refused.value) == (
        f"actions: cannot start: the playbooks do not match the rules: {typo}: playbook"
        f" 'gold_upgrade', field when.to: 'goldd' is not a value_tier class of"
        f" {default_rules_path()} (it declares gold, silver, bronze, none)"
    )


async def test_the_service_checks_the_classes_against_the_rules_file_it_is_given(
    tmp_path: Path,
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(default_rules_path().read_text().replace("gold", "platinum"))
    settings = ActionsSettings(api_keys="k", rules_file=rules)
    with pytest.raises(SystemExit, match=r"'gold' is not a value_tier class of .*rules\.yaml"):
        await run(settings)
    rules.write_text("scores: {}\n")
    with pytest.raises(SystemExit, match=r"^actions: invalid rules file: .*rules\.yaml:\d+: "):
        await run(settings)


def test_the_rules_file_is_the_scorers_unless_set_for_actions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert ActionsSettings().rules_file == default_rules_path()
    monkeypatch.setenv("SCORER_RULES_FILE", "/etc/scorer.yaml")
    assert ActionsSettings().rules_file == Path("/etc/scorer.yaml")
    monkeypatch.setenv("ACTIONS_RULES_FILE", "/etc/actions.yaml")
    assert ActionsSettings().rules_file == Path("/etc/actions.yaml")


async def test_the_service_refuses_to_start_without_api_keys() -> None:
    with pytest.raises(SystemExit, match="no API keys"):
        await run(ActionsSettings(api_keys="", allow_anonymous=False))


def _line_with(path: Path, text: str) -> int:
    """The number of the first line of the file holding `text`."""
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)
