"""Reading rules and playbooks files: what YAML itself lets through that a config must not
(a key given twice, alias bombs, nesting that exhausts the stack, bytes that are not UTF-8)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.contracts import Dimension
from shared.domain.conditions import Member
from shared.domain.documents import MAX_BYTES, MAX_DEPTH, yaml_mapping
from shared.domain.playbooks import (
    PlaybooksError,
    default_playbooks_path,
    load_playbooks,
    parse_playbooks,
)
from shared.domain.rules import RulesError, default_rules_path, load_rules, parse_rules

RULES = default_rules_path().read_text()


def test_a_key_given_twice_is_refused_with_both_lines() -> None:
    # PyYAML kept the last one silently: the first edit of a rule was lost without a word.
    text = "version: 1\nversion: 2\n" + RULES.split("\n", 1)[1]
    with pytest.raises(RulesError, match=r"found key 'version' twice \(first on line 1\)"):
        parse_rules(text, source="twice.yaml")
    # A template defined twice: the second silently replaced the first.
    books = default_playbooks_path().read_text()
    twice = books.replace("templates:\n", "templates:\n  vip_alert: {subject: x, body: y}\n", 1)
    first = books.split("\n").index("templates:") + 2  # the line inserted after it
    with pytest.raises(
        PlaybooksError, match=rf"found key 'vip_alert' twice \(first on line {first}\)"
    ):
        parse_playbooks(twice, source="twice.yaml")


def test_a_merge_key_may_be_overridden_and_equal_keys_in_other_mappings_are_fine() -> None:
    data = yaml_mapping("base: &b {a: 1, c: 3}\nx: {<<: *b, a: 2}\ny: {a: 1}\n", fail=ValueError)
    assert data["x"] == {"a": 2, "c": 3} and data["y"] == {"a": 1}


def test_an_alias_bomb_is_refused_before_it_expands() -> None:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    with pytest.raises(RulesError, match=r"more than 100,000 values \(an alias counts as all"):
        parse_rules("\n".join(lines) + "\n", source="bomb.yaml")


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 5_000])
def test_nesting_past_the_limit_is_refused_not_a_crash(levels: int) -> None:
    text = "deep: " + "[" * levels + "]" * levels + "\n"
    with pytest.raises(RulesError, match=rf"nested more than {MAX_DEPTH} levels deep"):
        parse_rules(text, source="deep.yaml")


def test_nesting_through_aliases_counts_too() -> None:
    half = MAX_DEPTH // 2 + 1
    text = f"a: &a {'[' * half}{']' * half}\nb: {'[' * half}*a{']' * half}\n"
    with pytest.raises(RulesError, match="levels deep"):
        parse_rules(text, source="deep.yaml")


def test_a_file_that_is_not_utf8_is_refused_with_the_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(RULES.replace("rules", "r\xe8gles", 1).encode("latin-1"))
    with pytest.raises(RulesError, match=r"latin1\.yaml: .*not UTF-8 text: byte 0xe8"):
        load_rules(path)
    path.write_bytes(b"\xff\xfe" + default_playbooks_path().read_bytes())
    with pytest.raises(PlaybooksError, match=r"not UTF-8 text: byte 0xff on line 1$"):
        load_playbooks(path)
    text = default_playbooks_path().read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_bytes("".join(text[:40]).encode() + b"# caf\xe9\n" + "".join(text[40:]).encode())
    with pytest.raises(PlaybooksError, match=r"not UTF-8 text: byte 0xe9 on line 41$"):
        load_playbooks(path)


def test_a_file_past_the_size_limit_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    # PyYAML built the whole tree first: 27 MB took 1.5 GB and 39 s to be refused.
    path = tmp_path / "huge.yaml"
    path.write_text(RULES + "# padding\n" * (MAX_BYTES // 10 + 1), encoding="utf-8")
    with pytest.raises(RulesError, match=r"huge\.yaml: .*larger than 8 MiB"):
        load_rules(path)
    path.write_text(RULES + "#\n" * 1000, encoding="utf-8")  # comments alone are fine
    load_rules(path)


def test_broken_yaml_is_reported_on_one_line_naming_the_file() -> None:
    # PyYAML's marks named "<unicode string>", over several lines.
    with pytest.raises(RulesError) as refused:
        parse_rules("a: [\nb: 1\n", source="mine.yaml")
    message = str(refused.value)
    assert '"mine.yaml", line 1' in message and "<unicode string>" not in message
    assert "\n" not in message


# YAML 1.1 (PyYAML's) read a country code NO as false, a postal code 01067 as the octal 567,
# 21:00 as the base-60 number 1260, and left 1e5 as text: the files are read as YAML 1.2.
CORE_SCHEMA = {
    "NO": "NO", "no": "no", "yes": "yes", "Off": "Off", "on": "on", "y": "y",
    "true": True, "True": True, "TRUE": True, "false": False, "FALSE": False, "tRue": "tRue",
    "01067": 1067, "-007": -7, "+7": 7, "0o17": 15, "0x1F": 31, "0b11": "0b11", "1_000": "1_000",
    "1:30": "1:30", "21:00": "21:00", "1e5": 100000.0, "1E-3": 0.001, "2.5": 2.5, ".5": 0.5,
    "-.inf": float("-inf"), "2024-01-01": "2024-01-01", "~": None, "null": None, "NULL": None,
    "Null": None, "None": "None", "=": "=", '"01067"': "01067", "'NO'": "NO",
}  # fmt: skip


@pytest.mark.parametrize(("plain", "read"), CORE_SCHEMA.items(), ids=CORE_SCHEMA.keys())
def test_plain_scalars_are_read_by_the_yaml_1_2_core_schema(plain: str, read: object) -> None:
    value = yaml_mapping(f"a: {plain}\n", fail=ValueError)["a"]
    assert (type(value), value) == (type(read), read)


def test_a_key_that_yaml_1_1_read_as_a_boolean_stays_text() -> None:
    assert yaml_mapping("on: 1\nno: 2\n", fail=ValueError) == {"on": 1, "no": 2}


@pytest.mark.parametrize("tagged", ["!!int x", "!!float abc", "!!bool yes", "!!bool maybe"])
def test_an_explicit_core_tag_on_a_value_it_cannot_hold_is_refused_as_yaml(tagged: str) -> None:
    with pytest.raises(RulesError, match=r"^t\.yaml: field \(file\): not valid YAML: '"):
        parse_rules(f"a: {tagged}\n", source="t.yaml")


def test_a_country_list_in_a_rule_reads_as_text() -> None:
    text = RULES.replace(
        "when: {feature: lifetime_orders, op: eq, value: 1}",
        "when: {attribute: country, in: [NO, SE, 01067]}",
    )
    rule = parse_rules(text, source="t").dimension(Dimension.LIFECYCLE_STAGE).rules[3]
    assert rule.when == Member(attribute="country", in_=["NO", "SE", 1067])
