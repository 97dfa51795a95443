"""How the gateway answers requests aiohttp's parser refuses (dfms.gateway.protocol)."""

from __future__ import annotations

import pytest
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    InvalidHeader,
    LineTooLong,
    TransferEncodingError,
)

from dfms.gateway.protocol import Limits, refusal

LIMITS = Limits(line=8192, field=16384, headers=64)
SAME = Limits(line=8192, field=8192, headers=64)


@pytest.mark.parametrize(("exc", "limits", "status", "code"), [
    (LineTooLong(b"/" + b"a" * 99 + b"...", 8192), LIMITS, 414, "uri_too_long"),
    (LineTooLong(b"secret value...", 16384), LIMITS, 431, "headers_too_large"),
    # Equal limits: told apart by what the line starts with.
    (LineTooLong(b"/files?q=" + b"a" * 91 + b"...", 8192), SAME, 414, "uri_too_long"),
    (LineTooLong(b"GET /aaaa...", 8192), SAME, 414, "uri_too_long"),
    (LineTooLong(b"X-Big: aaaa...", 8192), SAME, 431, "headers_too_large"),
    (BadHttpMessage("Too many headers received"), LIMITS, 431, "too_many_headers"),
    (BadHttpMethod("G@T"), LIMITS, 400, "malformed_request"),
    (InvalidHeader(b"X-A: \x00secret"), LIMITS, 400, "malformed_request"),
    (TransferEncodingError("bad chunk secret"), LIMITS, 400, "malformed_request"),
    (BadHttpMessage("Duplicate 'Host' header found."), LIMITS, 400, "malformed_request"),
])
def test_parser_errors_map_to_status_and_code(exc: Exception, limits: Limits, status: int,
                                              code: str) -> None:
    answer = refusal(exc, 400, limits)
    assert (answer.status, answer.code) == (status, code)
    # Nothing of the request is echoed: the message is fixed text and the limits.
    for secret in ("secret", "aaaa", "G@T", "Host", "X-Big"):
        assert secret not in answer.message


def test_limits_are_named_in_the_message() -> None:
    assert "8192" in refusal(LineTooLong(b"/x", 8192), 400, LIMITS).message
    assert "16384" in refusal(LineTooLong(b"v", 16384), 400, LIMITS).message
    assert "64" in refusal(BadHttpMessage("Too many headers received"), 400, LIMITS).message


def test_other_server_errors_are_the_envelope_too() -> None:
    assert refusal(RuntimeError("boom"), 500, LIMITS).code == "internal_error"
    assert refusal(None, 504, LIMITS).status == 504
