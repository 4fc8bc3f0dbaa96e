"""Invalid playbook files are refused with an error naming the file, the playbook and the field."""

from __future__ import annotations

import json
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.contracts import Dimension
from shared.domain.playbook_model import Channel, QuietHours, TaskAction
from shared.domain.playbook_requests import quiet_hours_record, quiet_until
from shared.domain.playbooks import (
    PlannedStep,
    PlaybooksError,
    check_against_rules,
    check_classes,
    check_playbooks,
    default_playbooks_path,
    load_playbooks,
    parse_playbooks,
    step_due_at,
)
from shared.domain.rules import default_rules_path, load_rules

GOOD_ACTION = "{kind: task, title: t, queue: q, due_in: 1d}"
SEQ = "sequences: {s: {steps: [{name: a, offset: 1d, channel: log, text: x}], "


def book(
    actions: str = GOOD_ACTION, extra: str = "", when: str = "{dimension: value_tier, to: gold}"
) -> str:
    return f"""
{extra}
playbooks:
  - name: first
    when: {{dimension: lifecycle_stage, to: new}}
    actions: [{GOOD_ACTION}]
  - name: vip
    when: {when}
    actions: [{actions}]
"""


@pytest.mark.parametrize(
    ("text", "where", "field", "message"),
    [
        (
            book("{kind: task, title: t, queue: q, due_in: two days}"),
            "playbook 'vip'",
            "actions.0.due_in",
            "duration",
        ),
        (
            book("{kind: alert, channel: pigeon, audience: vip, text: hi}"),
            "playbook 'vip'",
            "actions.0.channel",
            "webhook",
        ),
        (
            book("{kind: enrol, sequence: nowhere}"),
            "playbook 'vip'",
            "actions.0.sequence",
            "unknown sequence 'nowhere'",
        ),
        (
            book("{kind: alert, channel: log, audience: vip, template: nope}"),
            "playbook 'vip'",
            "actions.0.template",
            "unknown template 'nope'",
        ),
        (
            book("{kind: alert, channel: log, audience: vip, text: 'Hi {{ customer.id '}"),
            "playbook 'vip'",
            "actions.0.text",
            "template syntax error",
        ),
        (
            book("{kind: alert, channel: log, audience: vip}"),
            "playbook 'vip'",
            "actions.0",
            "either `template`",
        ),
        (
            book(f"{GOOD_ACTION}, {GOOD_ACTION}"),
            "playbook 'vip'",
            "actions",
            "at most one task action",
        ),
        (
            book("{kind: task, title: t, queue: q, due_in: 1d, colour: red}"),
            "playbook 'vip'",
            "actions.0.colour",
            "Extra inputs",
        ),
        (
            book(when="{dimension: value_teir, to: gold}"),
            "playbook 'vip'",
            "when.dimension",
            "value_tier",
        ),
        (
            book(when="{dimension: value_tier, if: {feature: no_such_feature, op: gt, value: 1}}"),
            "playbook 'vip'",
            "when.if.feature",
            "unknown feature",
        ),
        (
            book(when="{dimension: value_tier, if: {feature: latest_nps, op: eq, value: null}}"),
            "playbook 'vip'",
            "when.if",
            "`eq null` never holds",
        ),
        (
            book(
                extra="sequences: {s: {steps: [{name: a, offset: -1d, channel: email, text: x}]}}"
            ),
            "sequence 's'",
            "steps.0.offset",
            "negative",
        ),
        (
            book(
                extra="sequences: {s: {steps: [{name: a, offset: 1d, channel: log, template: t}]}}"
            ),
            "sequence 's'",
            "steps.0.template",
            "unknown template 't'",
        ),
        (
            book(
                extra="sequences: {s: {steps: [{name: a, offset: 1d, channel: log, text: x}],"
                " quiet_hours: {start: '21:00', end: '08:00', timezone: Mars/Olympus}}}"
            ),
            "sequence 's'",
            "quiet_hours.timezone",
            "unknown time zone",
        ),
        (
            book("{kind: task, title: t, queue: q, due_in: 3651d}"),
            "playbook 'vip'",
            "actions.0.due_in",
            "a duration must be at most 3650d (ten years)",
        ),
        (
            book("{kind: task, title: t, queue: q, due_in: 1000000000000d}"),
            "playbook 'vip'",
            "actions.0.due_in",
            "'1000000000000d' is too long; a duration must be at most 3650d",
        ),
        (
            book(
                extra="sequences: {s: {steps: [{name: a, offset: 3000000d, channel: log,"
                " text: x}]}}"
            ),
            "sequence 's'",
            "steps.0.offset",
            "at most 3650d",
        ),
        (
            book(
                extra="sequences: {s: {steps: [{name: a, offset: 1d, channel: log, text: x}],"
                " quiet_hours: {start: 2100, end: '08:00', timezone: Europe/Berlin}}}"
            ),
            "sequence 's'",
            "quiet_hours.start",
            "2100 is a number, not a time of day",
        ),
        (
            book(
                extra="sequences: {s: {steps: [{name: a, offset: 1d, channel: log, text: x}],"
                " quiet_hours: {start: '21:00+02:00', end: '08:00+02:00'}}}"
            ),
            "sequence 's'",
            "quiet_hours.start",
            "takes no zone of its own; set the sequence's `timezone` instead",
        ),
        (
            book(
                extra="sequences: {s: {steps: [{name: a, offset: 1d, channel: log, text: x}],"
                " quiet_hours: {start: '21:00', end: '25:00'}}}"
            ),
            "sequence 's'",
            "quiet_hours.end",
            "'25:00' is not a time of day",
        ),
        (
            book(
                extra="sequences: {s: {steps: [{name: a, offset: 7d, channel: log, text: x},"
                " {name: b, offset: 0d, channel: log, text: x}]}}"
            ),
            "sequence 's'",
            "steps",
            "step 'b' comes after 'a' but has an earlier offset",
        ),
        (
            book(
                extra="sequences: {s: {steps: [{name: a, offset: 1d, channel: log, text: x}],"
                " exit_on: {events: [login]}}}"
            ),
            "sequence 's'",
            "exit_on.events.0",
            "purchase",
        ),
        # Settings that contradict each other, or that nothing reads: each was accepted
        # and then silently never matched, or was ignored.
        (
            book(when="{dimension: value_tier, from: gold, to: gold}"),
            "playbook 'vip'",
            "when",
            "`from` and `to` are both 'gold': a change always moves to another class",
        ),
        (
            book(
                extra=SEQ + "exit_on: {changes: [{dimension: value_tier, from: [none],"
                " to: none}]}}}"
            ),
            "sequence 's'",
            "exit_on.changes.0",
            "`from` and `to` are both 'none'",
        ),
        (
            book(when="{dimension: value_tier, to: gold, cause: [event, event]}"),
            "playbook 'vip'",
            "when.cause",
            "'event' is listed twice",
        ),
        (
            book(when="{dimension: value_tier, from: [silver, bronze, silver]}"),
            "playbook 'vip'",
            "when.from",
            "'silver' is listed twice",
        ),
        (
            book(extra=SEQ + "exit_on: {events: [purchase, purchase]}}}"),
            "sequence 's'",
            "exit_on.events",
            "'purchase' is listed twice",
        ),
        (
            book(extra=SEQ + "reentry: never, reentry_after: 30d}}"),
            "sequence 's'",
            "reentry_after",
            "`reentry: never` lets no customer enrol again, after any wait: remove",
        ),
        (
            book("{kind: alert, channel: webhook, audience: ops, text: hi, to: ops@example.com}"),
            "playbook 'vip'",
            "actions.0.to",
            "`to` is an e-mail recipient, and an alert by webhook sends no e-mail: remove it,"
            " or send by `channel: email`",
        ),
        (
            book("{kind: alert, channel: log, audience: ops, text: hi, to: ops@example.com}"),
            "playbook 'vip'",
            "actions.0.to",
            "an alert by log sends no e-mail",
        ),
        (
            book("{kind: alert, channel: email, audience: ops, text: hi, to: not-an-address}"),
            "playbook 'vip'",
            "actions.0.to",
            "'not-an-address' is not one e-mail address: write e.g. ops@example.com, or a"
            " template such as {{ customer.email }}",
        ),
        (
            book(
                extra="sequences: {s: {steps: [{name: a, offset: 1d, channel: webhook, text: x,"
                " to: '{{ customer.email }}'}]}}"
            ),
            "sequence 's'",
            "steps.0.to",
            "a step by webhook sends no e-mail",
        ),
        (
            book(
                extra="sequences: {s: {steps: [{name: a, offset: 1d, channel: email, text: x,"
                " to: 'a@example.com, b@example.com'}]}}"
            ),
            "sequence 's'",
            "steps.0.to",
            "'a@example.com, b@example.com' is not one e-mail address",
        ),
    ],
)
def test_an_invalid_playbook_is_refused_naming_file_playbook_and_field(
    text: str, where: str, field: str, message: str
) -> None:
    with pytest.raises(PlaybooksError) as caught:
        parse_playbooks(text, source="team.yaml")
    error = caught.value
    assert (error.source, error.where, error.field) == ("team.yaml", where, field)
    assert message in str(error)
    assert error.line is not None, error  # the line the field is on, in a long file
    assert str(error).startswith(f"team.yaml:{error.line}: {where}, field {field}: ")
    _assert_on_the_line(text, error.line, field)


def test_settings_that_agree_are_accepted() -> None:
    alerts = (
        "{kind: alert, channel: email, audience: ops, text: hi, to: 'Ops <ops@example.com>'},"
        " {kind: alert, channel: email, audience: ops, text: hi, to: '{{ customer.email }}'},"
        " {kind: alert, channel: webhook, audience: ops, text: hi}"
    )
    text = book(
        alerts,
        # a sequence no playbook enrols in is kept: its active enrolments run to their end
        extra=SEQ + "reentry: allow, reentry_after: 30d, exit_on: {events: [purchase]}}}",
        when="{dimension: value_tier, from: [gold, silver], to: gold, cause: [event, time]}",
    )
    books = parse_playbooks(text, source="x.yaml")
    assert books.sequences["s"].reentry_after == timedelta(days=30)


def test_a_section_with_every_entry_commented_out_is_empty() -> None:
    # Before: "Input should be a valid dictionary" (YAML reads the emptied section as null).
    emptied = book(
        extra="templates:\n  # spare: {text: x}\nsequences:\n  s:\n    steps: [{name: a,"
        " offset: 1d, channel: log, text: x}]\n    exit_on:\n      events:\n      changes:\n"
    )
    left_out = book(extra=SEQ + "}}")
    books = parse_playbooks(emptied, source="x.yaml")
    assert books.templates == {} and books.sequences["s"].exit_on.events == []
    assert books.version == parse_playbooks(left_out, source="x.yaml").version
    assert parse_playbooks(book(extra=SEQ + "exit_on: }}"), source="x.yaml").version == (
        books.version
    )


def test_two_playbooks_with_one_name_are_refused() -> None:
    text = book().replace("name: vip", "name: first")
    with pytest.raises(PlaybooksError, match="playbook 'first', field name: two playbooks share"):
        parse_playbooks(text, source="team.yaml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- just\n- a list\n", "must be a YAML mapping"),
        ("playbooks: [\n", "not valid YAML"),
        ("playbooks: []\n", "at least 1 item"),
    ],
)
def test_a_malformed_file_is_refused(text: str, message: str) -> None:
    with pytest.raises(PlaybooksError, match=message):
        parse_playbooks(text, source="x.yaml")


def test_an_unreadable_file_names_its_path(tmp_path: Path) -> None:
    with pytest.raises(PlaybooksError, match=r"missing\.yaml: field \(file\): cannot read"):
        load_playbooks(tmp_path / "missing.yaml")


def test_check_summarises_the_default_file_and_its_version_is_a_content_hash(
    tmp_path: Path,
) -> None:
    summary = check_playbooks(default_playbooks_path(), load_rules(default_rules_path()))
    assert "valid" in summary and "5 playbooks, 3 sequences" in summary
    copy = tmp_path / "copy.yaml"
    copy.write_text("# a comment changes nothing\n" + default_playbooks_path().read_text())
    assert load_playbooks(copy).version == load_playbooks(default_playbooks_path()).version


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("'21:00'", '"08:00"'),
        ("'21:00:00'", "'08:00:00'"),
        ("21:00", "08:00"),  # YAML 1.2: text (YAML 1.1 read 21:00 as the base-60 number 1260)
    ],
)
def test_quiet_hours_quoted_or_not_are_naive_wall_clock_times_in_the_sequence_zone(
    start: str, end: str
) -> None:
    text = book(
        extra="sequences: {s: {steps: [{name: a, offset: 1d, channel: log, text: x}],"
        f" quiet_hours: {{start: {start}, end: {end}, timezone: Europe/Berlin}}}}}}"
    )
    quiet = parse_playbooks(text, source="x.yaml").sequences["s"].quiet_hours
    assert quiet is not None and (quiet.start.tzinfo, quiet.end.tzinfo) == (None, None)
    assert quiet == QuietHours(start=time(21, 0), end=time(8, 0), timezone="Europe/Berlin")


def test_a_quiet_hours_time_with_a_zone_is_refused_in_code_too() -> None:
    with pytest.raises(ValidationError, match="takes no zone of its own"):
        QuietHours(start=time(21, 0, tzinfo=UTC), end=time(8, 0))


QUIET = QuietHours(start=time(21, 0), end=time(8, 0), timezone="Europe/Berlin")


@pytest.mark.parametrize(
    ("enrolled", "offset_h", "quiet", "due"),
    [
        (datetime(2026, 1, 5, 10, tzinfo=UTC), 24, None, datetime(2026, 1, 6, 10, tzinfo=UTC)),
        # 22:00 Berlin is quiet: moved to 08:00 Berlin (07:00 UTC) the next morning.
        (datetime(2026, 1, 5, 21, tzinfo=UTC), 0, QUIET, datetime(2026, 1, 6, 7, tzinfo=UTC)),
        # 03:00 Berlin is quiet: moved to 08:00 the same morning.
        (datetime(2026, 1, 6, 2, tzinfo=UTC), 0, QUIET, datetime(2026, 1, 6, 7, tzinfo=UTC)),
        # 12:00 Berlin is not quiet.
        (datetime(2026, 1, 6, 11, tzinfo=UTC), 0, QUIET, datetime(2026, 1, 6, 11, tzinfo=UTC)),
        (
            datetime(2026, 1, 6, 12, 30, tzinfo=UTC),
            0,
            QuietHours(start=time(12, 0), end=time(13, 0)),
            datetime(2026, 1, 6, 13, tzinfo=UTC),
        ),
    ],
)
def test_steps_are_due_at_their_offset_and_never_inside_quiet_hours(
    enrolled: datetime, offset_h: int, quiet: QuietHours | None, due: datetime
) -> None:
    step = PlannedStep(0, "s", timedelta(hours=offset_h), Channel.LOG, None, "", "x")
    assert step_due_at(enrolled, step, quiet) == due


def test_a_step_claimed_in_the_repeated_hour_waits_for_the_end_still_ahead() -> None:
    # Berlin goes back from 03:00 CEST to 02:00 CET on 2026-10-25: 02:00-03:00 comes twice.
    # Claimed at the second 02:00 (01:00 UTC), quiet until 02:30: the second 02:30. Before,
    # the first 02:30 (00:30 UTC), in the past: put back, claimed again, a busy loop.
    quiet = QuietHours(start=time(22, 0), end=time(2, 30), timezone="Europe/Berlin")
    now = datetime(2026, 10, 25, 1, 0, tzinfo=UTC)
    assert quiet_until(now, quiet_hours_record(quiet)) == datetime(2026, 10, 25, 1, 30, tzinfo=UTC)


_ZONES = ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "UTC", "Asia/Kolkata"]


@given(
    at=st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31),
                    timezones=st.just(UTC)),
    start=st.times().map(lambda t: t.replace(microsecond=0)),
    end=st.times().map(lambda t: t.replace(microsecond=0)), zone=st.sampled_from(_ZONES),
)  # fmt: skip
@example(datetime(2026, 10, 25, 1, 0, tzinfo=UTC), time(22), time(2, 30), "Europe/Berlin")
# Quiet hours that end inside the hour clocks skip (New York 2026-03-08 02:00-03:00, Lord
# Howe's half hour 2026-10-04 02:00-02:30): the end came out an hour (half an hour) early,
# still inside them, and the step was put back twice and sent late.
@example(datetime(2026, 3, 8, 3, 0, tzinfo=UTC), time(22), time(2, 30), "America/New_York")
@example(datetime(2026, 10, 3, 12, 30, tzinfo=UTC), time(22), time(2, 15), "Australia/Lord_Howe")
def test_a_step_is_put_back_to_the_first_time_outside_its_quiet_hours(
    at: datetime, start: time, end: time, zone: str
) -> None:
    assume(start != end)
    quiet = QuietHours(start=start, end=end, timezone=zone)
    until = quiet_until(at, quiet_hours_record(quiet))
    if until is not None:
        assert until > at
        assert quiet_until(until, quiet_hours_record(quiet)) is None  # out of them then
        just_before = until - timedelta(seconds=1)
        assert just_before <= at or quiet_until(just_before, quiet_hours_record(quiet))


@pytest.mark.parametrize(
    ("now", "until"),
    [
        (datetime(2026, 1, 5, 19, 59, tzinfo=UTC), None),  # 20:59 Berlin: send
        (datetime(2026, 1, 5, 20, tzinfo=UTC), datetime(2026, 1, 6, 7, tzinfo=UTC)),  # 21:00
        (datetime(2026, 1, 6, 6, 59, tzinfo=UTC), datetime(2026, 1, 6, 7, tzinfo=UTC)),
        (datetime(2026, 1, 6, 7, tzinfo=UTC), None),  # 08:00 Berlin: quiet hours are over
    ],
)
def test_a_step_claimed_inside_its_quiet_hours_waits_for_their_end(
    now: datetime, until: datetime | None
) -> None:
    record = quiet_hours_record(QUIET)
    assert json.loads(json.dumps(record)) == record  # it is stored as JSON with the step
    assert quiet_until(now, record) == until
    assert quiet_until(now, None) is None  # a step without quiet hours goes out when claimed


@pytest.mark.parametrize(
    ("written", "meant"),
    [
        ("2d", timedelta(days=2)),
        ("24h", timedelta(hours=24)),
        ("1d12h", timedelta(hours=36)),
        ("90m", timedelta(minutes=90)),
        ("1w", timedelta(weeks=1)),
        ("0d", timedelta(0)),
        ("3650d", timedelta(days=3650)),
        ("P2D", timedelta(days=2)),
    ],
)
def test_durations_read_as_written(written: object, meant: timedelta) -> None:
    text = book("{kind: task, title: t, queue: q, due_in: " + str(written) + "}")
    books = parse_playbooks(text, source="x.yaml")
    task = books.playbooks[1].actions[0]
    assert isinstance(task, TaskAction) and task.due_in == meant


def test_an_unreadable_duration_says_how_to_write_one() -> None:
    with pytest.raises(PlaybooksError, match=r"'soon' is not a duration; write e\.g\. 2d"):
        parse_playbooks(book("{kind: task, title: t, queue: q, due_in: soon}"), source="x.yaml")


@pytest.mark.parametrize(
    ("text", "where", "field"),
    [
        (book("{kind: task, title: t, queue: q, due_in: 2}"), "playbook 'vip'", "actions.0.due_in"),
        (
            book(extra="sequences: {s: {steps: [{name: a, offset: 1.5, channel: log, text: x}]}}"),
            "sequence 's'",
            "steps.0.offset",
        ),
        (
            book(
                extra="sequences: {s: {steps: [{name: a, offset: 1d, channel: log, text: x}],"
                " reentry_after: 30}}"
            ),
            "sequence 's'",
            "reentry_after",
        ),
    ],
)
def test_a_duration_without_a_unit_is_refused(text: str, where: str, field: str) -> None:
    # Before: read as seconds, so `due_in: 2` made a task due two seconds after the change.
    with pytest.raises(PlaybooksError) as caught:
        parse_playbooks(text, source="x.yaml")
    assert str(caught.value).startswith(f"x.yaml:{caught.value.line}: {where}, field {field}: ")
    assert "is a number without a unit; write e.g. 2d, 24h, 90m, 1d12h, 1w or P2D" in str(
        caught.value
    )


DEFAULT_CLASSES = load_rules(default_rules_path()).declared_classes()
WIN_BACK = "sequences: {s: {steps: [{name: a, offset: 1d, channel: log, text: x}], exit_on: "


@pytest.mark.parametrize(
    ("text", "where", "field", "message"),
    [
        (
            book(when="{dimension: value_tier, to: goldd}"),
            "playbook 'vip'",
            "when.to",
            "'goldd' is not a value_tier class of rules.yaml (it declares gold, silver, bronze,"
            " none)",
        ),
        (  # a lifecycle stage on the value tier
            book(when="{dimension: value_tier, to: at_risk}"),
            "playbook 'vip'",
            "when.to",
            "'at_risk' is not a value_tier class",
        ),
        (
            book(when="{dimension: lifecycle_stage, from: [new, churnd], to: at_risk}"),
            "playbook 'vip'",
            "when.from.1",
            "'churnd' is not a lifecycle_stage class",
        ),
        (
            book(extra=WIN_BACK + "{changes: [{dimension: value_tier, from: goldd}]}}}"),
            "sequence 's'",
            "exit_on.changes.0.from",
            "'goldd' is not a value_tier class",
        ),
    ],
)
def test_a_class_the_rules_do_not_declare_for_its_dimension_is_refused(
    text: str, where: str, field: str, message: str
) -> None:
    # Before: accepted, and the playbook (or the exit) silently never matched a change.
    books = parse_playbooks(text, source="team.yaml")
    with pytest.raises(PlaybooksError) as caught:
        check_classes(books, DEFAULT_CLASSES, declared_by="rules.yaml")
    error = caught.value
    assert (error.source, error.where, error.field) == ("team.yaml", where, field)
    assert str(error).startswith(f"team.yaml: {where}, field {field}: {message}")


def test_the_classes_are_those_the_rules_declare() -> None:
    books = load_playbooks(default_playbooks_path())
    check_classes(books, DEFAULT_CLASSES, declared_by="rules.yaml")  # the shipped pair agrees
    renamed = {**DEFAULT_CLASSES, Dimension.VALUE_TIER: ("platinum", "gold", "rest")}
    check_classes(
        parse_playbooks(book(when="{dimension: value_tier, to: platinum}"), source="x.yaml"),
        renamed,
        declared_by="ours.yaml",
    )
    with pytest.raises(PlaybooksError, match=r"'bronze' is not a value_tier class of ours\.yaml"):
        text = book(when="{dimension: value_tier, from: bronze}")
        check_classes(parse_playbooks(text, source="x.yaml"), renamed, declared_by="ours.yaml")


DEFAULT_RULES = load_rules(default_rules_path())


@pytest.mark.parametrize(
    ("when", "field", "message"),
    [
        (  # a gold change carries m_score, f_score and days_since_last_purchase only
            "{dimension: value_tier, to: gold, if: {feature: spend_365d, op: gt, value: 1000}}",
            "when.if",
            "feature 'spend_365d' is in no value_tier change to gold of",
        ),
        (  # nested, and on any class of the dimension
            "{dimension: activity_level, if: {not: {feature: logins_30d, op: ge, value: 1}}}",
            "when.if",
            "feature 'logins_30d' is in no activity_level change of",
        ),
    ],
)
def test_a_condition_on_a_feature_no_matching_change_carries_is_refused(
    when: str, field: str, message: str
) -> None:
    # Before: accepted, and always false: the playbook silently never fired.
    books = parse_playbooks(book(when=when), source="team.yaml")
    with pytest.raises(PlaybooksError) as caught:
        check_against_rules(books, DEFAULT_RULES)
    assert (caught.value.where, caught.value.field) == ("playbook 'vip'", field)
    assert message in str(caught.value)


def test_a_condition_on_what_the_deciding_rules_read_or_on_attributes_is_accepted() -> None:
    for when in (
        "{dimension: value_tier, to: gold, if: {feature: m_score, op: ge, value: 5}}",
        # silver is decided on m_score or f_score; none (the catch-all) on what came before
        "{dimension: value_tier, to: [silver, none], if: {feature: f_score, op: ge, value: 3}}",
        "{dimension: activity_level, to: inactive,"
        " if: {feature: days_since_last_activity, op: gt, value: 60}}",
        "{dimension: value_tier, to: gold, if: {attribute: region, op: eq, value: eu}}",
    ):
        check_against_rules(parse_playbooks(book(when=when), source="x.yaml"), DEFAULT_RULES)
    exits = WIN_BACK + "{changes: [{dimension: value_tier, if: {feature: tenure_days,"
    exits += " op: gt, value: 1}}]}}}"
    with pytest.raises(PlaybooksError, match="feature 'tenure_days' is in no value_tier change"):
        check_against_rules(parse_playbooks(book(extra=exits), source="x.yaml"), DEFAULT_RULES)


ALERT = "{kind: alert, channel: log, audience: vip, "
EMAIL_ALERT = "{kind: alert, channel: email, audience: vip, "
STEP_S = "sequences: {s: {steps: [{name: a, offset: 1d, channel: email, "


@pytest.mark.parametrize(
    ("actions", "extra", "where", "field", "message"),
    [
        (
            "{kind: task, title: 'Welcome {{ features.spend_365d }}', queue: q, due_in: 1d}",
            "",
            "playbook 'vip'",
            "actions.0.title",
            "feature 'spend_365d' is in no value_tier change to gold of",
        ),
        (
            ALERT + "text: \"{{ change['features']['tenure_days'] }}\"}",
            "",
            "playbook 'vip'",
            "actions.0.text",
            "feature 'tenure_days' is in no value_tier change to gold of",
        ),
        (
            EMAIL_ALERT + "text: hi, to: '{{ features.r_score }}@example.com'}",
            "",
            "playbook 'vip'",
            "actions.0.to",
            "feature 'r_score' is in no value_tier change to gold of",
        ),
        (
            ALERT + "template: note}",
            "templates: {note: {subject: '{{ features.spend_365d }}', text: hi}}",
            "template 'note'",
            "subject",
            "feature 'spend_365d' is in no value_tier change to gold of",
        ),
        (
            "{kind: enrol, sequence: s}",
            STEP_S + "text: 'spent {{ features.spend_365d }}'}]}}",
            "sequence 's'",
            "steps.0.text",
            "feature 'spend_365d' is in no value_tier change to gold of",
        ),
    ],
)
def test_a_template_reading_a_feature_no_change_of_its_playbook_carries_is_refused(
    actions: str, extra: str, where: str, field: str, message: str
) -> None:
    # Before: accepted, while the same feature in the playbook's `if` was refused; it
    # rendered as empty text on every change.
    books = parse_playbooks(book(actions, extra=extra), source="team.yaml")
    with pytest.raises(PlaybooksError) as caught:
        check_against_rules(books, DEFAULT_RULES)
    error = caught.value
    assert (error.where, error.field) == (where, field), str(error)
    assert str(error).startswith(f"team.yaml: {where}, field {field}: {message}")
    assert "a change carries only what the rule that decided it read (days_since" in str(error)
    assert str(error).endswith("renders it") == (where != "playbook 'vip'")


def test_a_template_reading_what_its_playbooks_changes_carry_is_accepted() -> None:
    title = "{kind: task, title: '{{ features.m_score }} {{ change.features.f_score }}',"
    actions = title + " queue: q, due_in: 1d}, {kind: enrol, sequence: s}"
    # a sequence no playbook enrols in renders for no change: nothing to check it against
    extra = STEP_S + "text: '{{ features.days_since_last_purchase }}'}]}, unused: {steps:"
    extra += " [{name: a, offset: 1d, channel: log, text: '{{ features.tenure_days }}'}]}}"
    check_against_rules(parse_playbooks(book(actions, extra=extra), source="x.yaml"), DEFAULT_RULES)
    check_against_rules(load_playbooks(default_playbooks_path()), DEFAULT_RULES)


def _assert_on_the_line(text: str, line: int, field: str) -> None:
    """The line an error names holds the last key its field names (the mapping holding it
    when the field is a list item or the file)."""
    names = [part for part in field.split(".") if part and not part.isdigit()]
    if names:
        assert names[-1] in text.splitlines()[line - 1] or any(
            name in text.splitlines()[line - 1] for name in names
        ), (line, field, text.splitlines()[line - 1])
