"""Reading GitHub webhook bodies: JSON or form-encoded ``payload=``."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from api.errors import ValidationFailed

# A full object id: SHA-1, or SHA-256 for repositories that use it.
_SHA_RE = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
BRANCH_PREFIX = "refs/heads/"


@dataclass(frozen=True)
class Push:
    ref: str
    after: str
    deleted: bool
    sender: str | None

    @property
    def branch(self) -> str | None:
        if self.ref.startswith(BRANCH_PREFIX):
            return self.ref[len(BRANCH_PREFIX) :]
        return None

    @property
    def removes_branch(self) -> bool:
        return self.deleted or self.after.strip("0") == ""


def parse_body(body: bytes, content_type: str) -> dict[str, Any]:
    """The payload as a JSON object, or :class:`ValidationFailed` (422)."""
    try:
        if content_type == "application/x-www-form-urlencoded":
            fields = parse_qs(body.decode("utf-8"), strict_parsing=False)
            if "payload" not in fields:
                raise ValidationFailed(
                    ["body", "payload"], "is required in a form-encoded delivery"
                )
            data = json.loads(fields["payload"][0])
        else:
            data = json.loads(body)
    except UnicodeDecodeError:
        raise ValidationFailed(["body"], "is not UTF-8") from None
    except json.JSONDecodeError as err:  # its message names a place, not content
        raise ValidationFailed(["body"], f"is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValidationFailed(["body"], "must be a JSON object")
    return data


def parse_push(data: dict[str, Any]) -> Push:
    ref = data.get("ref")
    after = data.get("after")
    if not isinstance(ref, str):
        raise ValidationFailed(["body", "ref"], "is required and must be a string")
    if not isinstance(after, str):
        raise ValidationFailed(["body", "after"], "is required and must be a string")
    if not _SHA_RE.fullmatch(after):
        raise ValidationFailed(["body", "after"], "is not a commit sha")
    sender = data.get("sender")
    login = sender.get("login") if isinstance(sender, dict) else None
    return Push(
        ref=ref,
        after=after,
        deleted=data.get("deleted") is True,
        sender=login if isinstance(login, str) else None,
    )
