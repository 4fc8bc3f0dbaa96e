"""A template naming what its context lacks (it would render as empty text) is refused when
the playbooks load; every name the check allows is one the planner gives."""

from __future__ import annotations

import pytest

from shared.domain.playbook_templates import Scope, template_names
from shared.domain.playbooks import (
    AlertRequest,
    EnrolRequest,
    PlaybooksError,
    TaskRequest,
    parse_playbooks,
    plan_actions,
)
from tests.unit.test_playbooks import change

STEP = "sequences: {{s: {{steps: [{{name: a, offset: 1d, channel: email, {step}}}]}}}}"


def books(task: str = "t", alert: str = "text: hi", step: str = "text: hi", extra: str = "") -> str:
    return f"""
{extra}
{STEP.format(step=step)}
playbooks:
  - name: vip
    when: {{dimension: value_tier, to: gold}}
    actions:
      - {{kind: task, title: "{task}", queue: q, due_in: 1d}}
      - {{kind: alert, channel: log, audience: vip, {alert}}}
      - {{kind: enrol, sequence: s}}
"""


@pytest.mark.parametrize(
    ("text", "where", "field", "message"),
    [
        (
            books(task="Call {{ custmer_id }}"),
            "playbook 'vip'",
            "actions.0.title",
            "unknown variable 'custmer_id' (a task title can use attributes, cause, change,"
            " customer, customer_id, dimension, emitted_at, features, from, id, occurred_at,"
            " playbook, rule, rules_version, to)",
        ),
        (
            books(alert="text: 'score {{ features.m_scor }}'"),
            "playbook 'vip'",
            "actions.1.text",
            "unknown feature 'm_scor' (an alert can use ",
        ),
        (
            books(alert="text: hi, to: \"{{ change['features']['spend'] }}\"").replace(
                "channel: log", "channel: email"
            ),
            "playbook 'vip'",
            "actions.1.to",
            "unknown feature 'spend'",
        ),
        (
            books(task="Call {{ change.custmer_id }} ({{ change['to'] }})"),
            "playbook 'vip'",
            "actions.0.title",
            "unknown change field 'custmer_id' (did you mean 'customer_id'?) (a task title",
        ),
        (
            books(alert="text: \"{{ change['tier'] }}\""),
            "playbook 'vip'",
            "actions.1.text",
            "unknown change field 'tier' (an alert can use ",
        ),
        (  # `audience` is an alert's, not a step's
            books(step="subject: '{{ audience }}', text: hi"),
            "sequence 's'",
            "steps.0.subject",
            "unknown variable 'audience' (a sequence step can use ",
        ),
        (  # a named template is checked for each place that uses it
            books(
                alert="template: note",
                step="template: note",
                extra="templates: {note: {text: 'step {{ step }}'}}",
            ),
            "template 'note'",
            "text",
            "unknown variable 'step' (an alert can use ",
        ),
        (  # one used nowhere yet: against what any place gives
            books(extra="templates: {spare: {subject: '{{ custmer }}', text: x}}"),
            "template 'spare'",
            "subject",
            "unknown variable 'custmer' (a template can use ",
        ),
    ],
)
def test_a_template_naming_what_its_context_lacks_is_refused(
    text: str, where: str, field: str, message: str
) -> None:
    # Before: accepted, and rendered as empty text ("Call ", "score ").
    with pytest.raises(PlaybooksError) as caught:
        parse_playbooks(text, source="team.yaml")
    error = caught.value
    assert (error.where, error.field) == (where, field), str(error)
    assert str(error).startswith(f"team.yaml:{error.line}: {where}, field {field}: {message}"), str(
        error
    )


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("Welcome {{ customer_id | upperr }}", "unknown filter 'upperr' (did you mean 'upper'?)"),
        # Jinja itself lets these through until the branch runs: then every change failed.
        ("{% if to %}{{ to | upperr }}{% endif %}", "unknown filter 'upperr'"),
        ("{% if customer_id is nosuchtest %}x{% endif %}", "unknown test 'nosuchtest'"),
        ("{% filter xyzzy %}x{% endfilter %}", "unknown filter 'xyzzy' (Jinja's built-in"),
        ("{{ ['a'] | map('upperr') | join }}", "unknown filter 'upperr'"),
        ("{{ [1] | selectattr('real', 'od') | list }}", "unknown test 'od' (did you mean 'odd'?)"),
        ("{% include 'header.txt' %}", "{% include %} is not available"),
        ("{% extends 'base.txt' %}", "{% extends %} is not available"),
        ("{% import 'macros.txt' as m %}", "{% import %} is not available"),
        ("{% from 'macros.txt' import x %}", "{% from ... import %} is not available"),
        (
            "{% block a %}{% endblock %}{% block a %}{% endblock %}",
            "template syntax error on line 1: block 'a' defined twice",
        ),
        ("{{ customer_id" + "|e" * 5000 + " }}", "template nested too deeply"),
    ],
)
def test_a_template_that_could_only_fail_when_rendered_is_refused_naming_what(
    template: str, message: str
) -> None:
    # Before: a traceback (a misspelt filter at the top level), or accepted and then failing
    # on every change that reached it, which lost the action.
    with pytest.raises(PlaybooksError) as caught:
        parse_playbooks(books(task=template.replace('"', "'")), source="team.yaml")
    line = caught.value.line
    assert line is not None and "title" in books(task="x").splitlines()[line - 1], line
    assert str(caught.value).startswith(
        f"team.yaml:{line}: playbook 'vip', field actions.0.title: {message}"
    ), str(caught.value)


def test_the_filters_and_tests_jinja_has_are_accepted() -> None:
    template = (
        "{{ to | upper }} {{ ['a'] | map('upper') | join }} {{ [1] | select('odd') | list }}"
        " {% if customer.name is defined %}{{ customer.name | title }}{% endif %}"
        " {{ [customer] | map(attribute='id') | first }}"
    )
    books_ = parse_playbooks(books(task=template), source="x.yaml")
    plan = plan_actions(change("value_tier", "silver", "gold"), books_)
    assert not plan.failures


@pytest.mark.parametrize(
    "template",
    [
        "{{ features.m_score }} {{ features['spend_365d'] }} {{ change.features.r_score }}",
        "{% for k, v in features.items() %}{{ k }}={{ v }} {% endfor %}",
        "{{ customer.segment }} {{ attributes.anything }} {{ range(2) | list }}",
        "{% set features = {'x': 1} %}{{ features.x }}",  # the template's own `features`
        "{{ change.customer_id }} {{ change['from'] }} {{ change.items() | list }}",
        "{% for change in [{'x': 1}] %}{{ change.x }}{% endfor %}",
    ],
)
def test_features_and_attributes_the_context_may_hold_are_accepted(template: str) -> None:
    parse_playbooks(books(alert=f'text: "{template}"'), source="x.yaml")


def test_every_name_the_check_allows_is_in_the_context_it_is_rendered_with() -> None:
    def every(scope: Scope) -> str:
        return "|".join(f"{{{{ {name} is defined }}}}" for name in sorted(template_names(scope)))

    text = books(
        task=every(Scope.TASK), alert=f"text: '{every(Scope.ALERT)}'",
        step=f"text: '{every(Scope.STEP)}'",
    )  # fmt: skip
    plan = plan_actions(
        change("value_tier", "silver", "gold"), parse_playbooks(text, source="x.yaml")
    )
    task, alert, enrol = plan.requests
    assert isinstance(task, TaskRequest) and isinstance(alert, AlertRequest)
    assert isinstance(enrol, EnrolRequest) and not plan.failures
    for rendered, scope in (
        (task.title, Scope.TASK), (alert.text, Scope.ALERT), (enrol.steps[0].text, Scope.STEP),
    ):  # fmt: skip
        assert rendered.split("|") == ["True"] * len(template_names(scope)), scope
