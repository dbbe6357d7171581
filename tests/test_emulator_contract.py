"""Requests the real clients send (as the emulator records them) conform to the official API descriptions.

The descriptions live in ../shared/specs, which a user's machine does not have: the tests skip
without them. Known deviation of the published SendGrid description: it types top-level
``custom_args`` as a string while the API takes (and the client sends) an object of strings.
"""

from __future__ import annotations

import gzip
import json
from typing import Any
from urllib.parse import parse_qsl

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from channels.emulator import ProviderEmulator
from tests.conftest import REPO_ROOT
from tests.test_emulator import offer_mail, sendgrid_client, twilio_client

SPECS = REPO_ROOT.parent / "shared" / "specs"
MESSAGES_PATH = "/2010-04-01/Accounts/{AccountSid}/Messages.json"
pytestmark = pytest.mark.skipif(not SPECS.is_dir(), reason=f"official API descriptions not found in {SPECS}")


def _validator(document: dict[str, Any], *pointer: str) -> Draft202012Validator:
    """A validator for the schema at ``pointer`` in ``document``, its ``#/...`` references resolved there."""
    # OpenAPI 3.1 documents carry no "$schema": say which dialect their schemas use.
    registry: Registry[Any] = Registry().with_resource("urn:spec", DRAFT202012.create_resource(document))
    path = "/".join(part.replace("~", "~0").replace("/", "~1") for part in pointer)
    return Draft202012Validator({"$ref": f"urn:spec#/{path}"}, registry=registry)


def _sendgrid_document() -> dict[str, Any]:
    document = json.loads((SPECS / "tsg_mail_v3.json").read_text())
    body = document["components"]["requestBodies"]["PostMailSend"]["content"]["application/json"]["schema"]
    # The published description types top-level custom_args as a string; the API takes an object.
    props = body.get("properties") or document["components"]["schemas"].get("PostMailSendBody", {}).get("properties")
    if props and "custom_args" in props:
        props["custom_args"] = {"type": "object", "additionalProperties": {"type": "string"}}
    return document


def _twilio_document() -> dict[str, Any]:
    with gzip.open(SPECS / "twilio_api_v2010.json.gz") as handle:
        document = json.load(handle)
    return document


def test_sendgrid_mail_send_requests_match_the_description() -> None:
    document = _sendgrid_document()
    validator = _validator(document, "components", "requestBodies", "PostMailSend", "content", "application/json",
                           "schema")
    with ProviderEmulator() as emulator:
        sendgrid_client(emulator).send(offer_mail(3))
        bodies = [json.loads(r.body) for r in emulator.requests if r.path == "/v3/mail/send"]
    assert bodies, "the client sent nothing"
    assert list(validator.iter_errors({"from": {"email": "a@example.com"}})), "the check must be able to fail"
    for body in bodies:
        errors = sorted(validator.iter_errors(body), key=lambda e: list(e.path))
        assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]


def test_twilio_message_create_requests_match_the_description() -> None:
    document = _twilio_document()
    schema = document["paths"][MESSAGES_PATH]["post"]["requestBody"]["content"]["application/x-www-form-urlencoded"][
        "schema"]
    validator = _validator(document, "paths", MESSAGES_PATH, "post", "requestBody", "content",
                           "application/x-www-form-urlencoded", "schema")
    with ProviderEmulator() as emulator:
        twilio_client(emulator).messages.create(to="+15145550134", from_="+15145550000", body="Hello",
                                                status_callback="https://example.com/twilio/status")
        forms = [dict(parse_qsl(r.body.decode())) for r in emulator.requests
                 if r.method == "POST" and r.path.endswith("/Messages.json")]
    assert forms, "the client sent nothing"
    bad_form = {"To": "+15145550134", "ValidityPeriod": "soon"}
    assert list(validator.iter_errors(bad_form)), "the check must be able to fail"
    for form in forms:
        errors = list(validator.iter_errors(form))
        assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]
        assert set(schema.get("required", [])) <= set(form)

