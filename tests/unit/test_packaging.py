"""pyproject.toml builds without setuptools' deprecation warnings (`make install`, `make run`)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).parents[2] / "pyproject.toml"


def test_the_license_is_an_spdx_expression_with_a_setuptools_that_reads_it() -> None:
    # `license = { text = ... }` made every build warn, three times per `make install`, that
    # a TOML table is deprecated and will stop building after 2027-02-18.
    config = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    assert config["project"]["license"] == "Apache-2.0"
    [setuptools] = [r for r in config["build-system"]["requires"] if r.startswith("setuptools")]
    minimum = re.fullmatch(r"setuptools>=(\d+)(\.\d+)*", setuptools)
    assert minimum and int(minimum.group(1)) >= 77, setuptools  # PEP 639 license expressions
