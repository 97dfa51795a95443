"""The gateway's one error table: every entry is in the DFMS exception tree, answers
a documented code, is found along the exception's MRO, and anything it does not know
is still a 500 ``internal_error`` through the error middleware."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from dfms.auth import errors as auth_errors
from dfms.chunkservice.errors import ChunkServiceError, QuorumNotReached
from dfms.errors import DependencyUnavailable, DfmsError
from dfms.events.envelope import MalformedEvent
from dfms.gateway import bodies
from dfms.gateway.error_table import ANSWERS, HttpAnswer, answer_for, api_error
from dfms.gateway.errors import ApiError, IncompleteBody
from dfms.gateway.middleware import error_middleware, request_id_middleware
from dfms.ring.errors import InvalidRing, RingConflict, RingError
from dfms.storage.errors import StorageError

ROOT = Path(__file__).resolve().parents[2]
SPEC_TEXT = (ROOT / "api" / "openapi.yaml").read_text(encoding="utf-8")
GATEWAY_DIR = ROOT / "dfms" / "gateway"


def _documented_codes() -> set[str]:
    """Every `snake_case` word the spec quotes: its error codes are written that way."""
    return set(re.findall(r"`([a-z][a-z0-9_]*)`", SPEC_TEXT))


def _subclasses(cls: type[BaseException]) -> Iterator[type[BaseException]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_every_entry_is_in_the_dfms_tree_with_an_error_status_and_a_stable_code() -> None:
    assert ANSWERS, "the error table is empty"
    for cls, answer in ANSWERS.items():
        assert issubclass(cls, DfmsError), f"{cls.__name__} is outside the DfmsError tree"
        assert 400 <= answer.status <= 599, (cls.__name__, answer.status)
        assert re.fullmatch(r"[a-z][a-z0-9_]*", answer.code), (cls.__name__, answer.code)


def test_every_code_of_the_table_is_documented_in_the_spec() -> None:
    documented = _documented_codes()
    assert "internal_error" in documented
    missing = {f"{cls.__name__}: {answer.code}" for cls, answer in ANSWERS.items()
               if answer.code not in documented}
    assert not missing, f"codes not documented in api/openapi.yaml: {sorted(missing)}"


def test_ring_and_event_errors_joined_the_dfms_tree() -> None:
    assert issubclass(RingError, DfmsError)
    assert issubclass(InvalidRing, DfmsError) and issubclass(InvalidRing, ValueError)
    assert issubclass(RingConflict, DfmsError)
    assert issubclass(MalformedEvent, DfmsError) and issubclass(MalformedEvent, ValueError)


def test_each_auth_error_answers_its_own_code() -> None:
    for cls in _subclasses(auth_errors.AuthError):
        answer = answer_for(cls("x"))
        assert answer is not None and answer.code == cls.code, cls.__name__
        if issubclass(cls, auth_errors.AuthenticationFailed):
            assert answer.status == 401 and "WWW-Authenticate" in answer.headers
    # The base class is never raised on purpose: a bug, not the client's fault.
    assert answer_for(auth_errors.AuthError("x")) == HttpAnswer(
        500, "internal_error", "unexpected authentication failure")


def test_the_lookup_follows_the_mro_most_specific_first() -> None:
    class SlowQuorum(QuorumNotReached):
        pass

    class OddChunkFailure(ChunkServiceError):
        pass

    quorum = api_error(SlowQuorum("2 of 3"))
    assert (quorum.status, quorum.code, quorum.headers) == (
        503, "storage_unavailable", {"Retry-After": "5"})
    odd = api_error(OddChunkFailure("?"))
    assert (odd.status, odd.code, odd.message) == (502, "storage_error",
                                                   "the storage layer failed")
    down = api_error(DependencyUnavailable("something unreachable"))
    assert (down.status, down.code) == (503, "service_unavailable")
    body = api_error(IncompleteBody("the request body stalled for 30s"))
    assert (body.status, body.code, body.message) == (
        400, "incomplete_body", "the request body stalled for 30s")
    ring = api_error(InvalidRing("weight must be positive"))
    assert (ring.status, ring.code, ring.message) == (400, "validation_error",
                                                      "weight must be positive")


def test_an_api_error_keeps_its_own_answer_and_unknown_errors_are_internal() -> None:
    own = ApiError(416, "range_not_satisfiable", "no", {"Content-Range": "bytes */3"})
    assert api_error(own) is own
    for exc in (RuntimeError("boom"), KeyError("k"), StorageError("node-1", "s3 said no"),
                RingError("odd")):
        assert answer_for(exc) is None, type(exc).__name__
        err = api_error(exc)
        assert (err.status, err.code, err.message) == (
            500, "internal_error", "the server failed to handle this request")


def test_no_handler_matches_error_text_any_more() -> None:
    for path in GATEWAY_DIR.glob("*.py"):
        source = path.read_text(encoding="utf-8")
        assert not re.search(r"in str\(exc\)", source), f"{path.name} matches error text"


async def test_a_broken_body_is_an_incomplete_body_error_with_its_cause() -> None:
    async def read() -> bytes:
        raise ConnectionResetError("peer went away")

    with pytest.raises(IncompleteBody) as info:
        async for _ in bodies.idle_guarded(read, 5.0):
            pass
    assert isinstance(info.value.__cause__, ConnectionResetError)
    assert "request body broke off" in str(info.value)


def _app(exc: BaseException) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        try:
            raise OSError("underlying")
        except OSError as cause:
            raise exc from cause

    app = web.Application(middlewares=[request_id_middleware, error_middleware])
    app.router.add_get("/x", handler)
    return app


async def _answer(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with TestClient(TestServer(_app(exc))) as client:
        resp = await client.get("/x")
        return resp.status, await resp.json(), dict(resp.headers)


async def test_an_unknown_exception_still_answers_500_internal_error() -> None:
    for exc in (RuntimeError("boom"), StorageError("node-1", "no bucket")):
        status, body, _ = await _answer(exc)
        assert status == 500
        assert body["error"]["code"] == "internal_error"
        assert body["error"]["message"] == "the server failed to handle this request"
        assert body["error"]["request_id"]


async def test_the_middleware_answers_from_the_table() -> None:
    status, body, headers = await _answer(QuorumNotReached("1 of 2"))
    assert (status, body["error"]["code"]) == (503, "storage_unavailable")
    assert headers["Retry-After"] == "5"
    status, body, headers = await _answer(auth_errors.InvalidCredentials())
    assert (status, body["error"]["code"]) == (401, "invalid_credentials")
    assert body["error"]["message"] == "email or password is incorrect"
    assert headers["WWW-Authenticate"] == 'Bearer realm="dfms"'
    status, body, _ = await _answer(RingConflict("epoch 4 is stale"))
    assert (status, body["error"]["code"]) == (409, "ring_conflict")


def test_the_table_module_is_the_one_place_that_maps_dfms_errors() -> None:
    # The middleware holds no per-type branches of its own beyond ApiError and aiohttp's.
    from dfms.gateway import middleware
    source = inspect.getsource(middleware.error_middleware)
    assert "answer_for(exc)" in source
    assert "isinstance(" not in source
