"""Webhook signature check: a pure function of (headers, raw body, secret)."""

from __future__ import annotations

import re
from collections.abc import Mapping

from gidgethub import ValidationFailure, sansio
from multidict import CIMultiDict, CIMultiDictProxy

from .errors import InvalidSignature
from .models import WebhookEvent

SIGNATURE_HEADER = "X-Hub-Signature-256"
EVENT_HEADER = "X-GitHub-Event"
DELIVERY_HEADER = "X-GitHub-Delivery"
_SIGNATURE_RE = re.compile(r"sha256=([0-9a-fA-F]{64})")


def _case_insensitive(headers: Mapping[str, str]) -> Mapping[str, str]:
    """aiohttp's headers as they are; any other mapping copied once."""
    if isinstance(headers, CIMultiDict | CIMultiDictProxy):
        return headers
    return CIMultiDict(headers)


def signature_digest(headers: Mapping[str, str]) -> str:
    """The hex digest of ``X-Hub-Signature-256``, lower case.

    Raises :class:`InvalidSignature` when the header is missing or malformed:
    a delivery can be refused on its headers, before its body is read.
    """
    signature = _case_insensitive(headers).get(SIGNATURE_HEADER)
    if signature is None:
        raise InvalidSignature("signature is missing")
    match = _SIGNATURE_RE.fullmatch(signature.strip())
    if match is None:
        raise InvalidSignature("signature is malformed")
    return match.group(1).lower()


def verify_webhook(
    headers: Mapping[str, str], body: bytes, secret: str
) -> WebhookEvent:
    """Check ``X-Hub-Signature-256`` against HMAC-SHA256(secret, body).

    Only the ``sha256=`` form is accepted (the legacy SHA-1 header is not).
    Raises :class:`InvalidSignature` when the header is missing, malformed or
    wrong; never looks at the body otherwise.
    """
    lookup = _case_insensitive(headers)
    digest = signature_digest(lookup)
    if not secret:
        raise InvalidSignature("no secret to check the signature with")
    try:
        # gidgethub compares with hmac.compare_digest
        sansio.validate_event(body, signature="sha256=" + digest, secret=secret)
    except ValidationFailure:
        raise InvalidSignature("signature does not match") from None
    return WebhookEvent(
        event=lookup.get(EVENT_HEADER, "").strip(),
        delivery_id=lookup.get(DELIVERY_HEADER) or None,
    )
