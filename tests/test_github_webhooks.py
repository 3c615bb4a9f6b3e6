"""verify_webhook: a pure function of headers, raw body and secret."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest
from multidict import CIMultiDict

from api.github import InvalidSignature, WebhookEvent, verify_webhook

BODY = (Path(__file__).parent / "github_samples" / "webhook_push.json").read_bytes()
SECRET = "It's a Secret to Everybody"


def signed(body: bytes = BODY, secret: str = SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "X-Hub-Signature-256": f"sha256={digest}",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "Content-Type": "application/json",
    }


def test_good_signature() -> None:
    assert verify_webhook(signed(), BODY, SECRET) == WebhookEvent(
        event="push", delivery_id="72d3162e-cc78-11e3-81ab-4c9367dc0958"
    )


def test_github_documented_example() -> None:
    # the example from GitHub's "Validating webhook deliveries" page
    digest = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    headers = {"x-hub-signature-256": f"sha256={digest}"}
    event = verify_webhook(headers, b"Hello, World!", SECRET)
    assert event == WebhookEvent(event="", delivery_id=None)


def test_headers_are_case_insensitive() -> None:
    lower = {key.lower(): value for key, value in signed().items()}
    assert verify_webhook(lower, BODY, SECRET).event == "push"
    assert verify_webhook(CIMultiDict(signed()), BODY, SECRET).event == "push"


def test_uppercase_hex_is_accepted() -> None:
    headers = signed()
    headers["X-Hub-Signature-256"] = (
        headers["X-Hub-Signature-256"].upper().replace("SHA256=", "sha256=")
    )
    assert verify_webhook(headers, BODY, SECRET).event == "push"


def test_wrong_secret() -> None:
    with pytest.raises(InvalidSignature, match="does not match"):
        verify_webhook(signed(secret="guess"), BODY, SECRET)


def test_tampered_body() -> None:
    with pytest.raises(InvalidSignature):
        verify_webhook(signed(), BODY.replace(b"main", b"prod"), SECRET)


def test_missing_header() -> None:
    headers = signed()
    del headers["X-Hub-Signature-256"]
    with pytest.raises(InvalidSignature, match="missing"):
        verify_webhook(headers, BODY, SECRET)


@pytest.mark.parametrize(
    "signature",
    [
        "sha1="
        + hmac.new(SECRET.encode(), BODY, "sha1").hexdigest(),  # legacy header form
        hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest(),  # no prefix
        "sha256=" + "z" * 64,  # not hex
        "sha256=" + "é" * 64,  # not even ASCII
        "sha256=abc",  # too short
        "",
    ],
)
def test_malformed_signature(signature: str) -> None:
    headers = signed()
    headers["X-Hub-Signature-256"] = signature
    with pytest.raises(InvalidSignature):
        verify_webhook(headers, BODY, SECRET)


def test_empty_secret_never_matches() -> None:
    with pytest.raises(InvalidSignature):
        verify_webhook(signed(secret=""), BODY, "")
