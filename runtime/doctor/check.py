"""One row of the stpm-doctor report and its statuses (shared by every check module)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"


@dataclass
class Check:
    """One row of the report: what was checked, its status and why."""

    name: str
    status: str
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)
