"""What rules and playbooks files have in common: a YAML mapping, versioned by content."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import yaml
from pydantic import BaseModel


def yaml_mapping(text: str, *, fail: Callable[[str], Exception]) -> dict[str, Any]:
    """The document as a mapping; `fail(reason)` builds the error to raise otherwise."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise fail(f"not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise fail("the file must be a YAML mapping")
    return data


def content_version(parsed: BaseModel) -> str:
    """A hash of the validated content: comments and key order do not change it."""
    canonical = json.dumps(parsed.model_dump(mode="json", by_alias=True), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]
