"""Security tests (issue 9, item 4): bad device tokens at every door, keys used where they do
not belong.

Every kind of bad token (forged claims, expired, `alg: none`, wrong key, wrong algorithm both
ways between HS256 and RS256/ES256, HS256 keyed with the public PEM) is a 401 `invalid_token`
with a JSON body and no upgrade at the edge, on each way in: a WebSocket request head in one read
(the `fasthead` path), one split over reads (the h11 path), the token in the query, a bearer
header or the cookie, and SSE; and it is a 401 at the inbox API (`GET /v1/inbox`, `POST
/v1/inbox/ack`), which then reads and removes nothing.

Covered elsewhere, not repeated here:
- the verifier itself, token by token: `tests/edge/test_edge_auth.py` (expired, wrong secret,
  `alg: none`, unconfigured algorithms, RS256/ES256 by another key, the other key type's
  algorithm, algorithm confusion with the public PEM, the HS256 fast path, `check_key`);
- a device token reads and acks only its own client's inbox, whatever the query says:
  `tests/test_inbox_api.py::test_pull_reads_only_the_tokens_own_inbox` and
  `::test_ack_touches_only_the_tokens_own_inbox`;
- API key missing (401) or wrong (403) on the push API: `tests/test_api.py`
  (`test_wrong_api_key_is_403`, `test_batch_needs_the_api_key`) and
  `tests/integration/test_push_api.py`; the dashboard: `tests/test_dashboard.py`; the edge admin
  API: `tests/edge/test_edge_admin.py`, `tests/edge/test_edge_request.py`;
- bad tokens against a live `zuulpush serve` with real clients:
  `tests/integration/test_edge_http.py`;
- secrets, keys and tokens never logged: `tests/integration/test_security.py`.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import jwt
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from core.tokens import AuthConfig, TokenVerifier
from registry.memory import MemoryRegistry
from router.api.app import create_api_app
from router.base import InboxEntry
from router.config import ApiConfig
from router.stores.memory import MemoryInbox, MemoryQueue
from tests.edge.test_edge_auth import claims, handmade, public_pem
from tests.edge.test_edge_protocol import (
    NOW_MS,
    SECRET,
    UPGRADE,
    Edge,
    parse_response,
    request,
)
from zuulpush.edge.state import State

API_KEY = "security-api-key"
ADMIN_KEY = "security-admin-key"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_PEM = public_pem(RSA_KEY)
CID = "client-1"  # the client of `claims()`

HS256 = AuthConfig(secret=SECRET, api_keys=(API_KEY,))
RS256 = AuthConfig(public_key=RSA_PEM, api_keys=(API_KEY,))
ES256 = AuthConfig(public_key=public_pem(EC_KEY), api_keys=(API_KEY,))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forged() -> str:
    """A good token of another client with the claims swapped for ours: the signature no longer
    matches what it signs."""
    header, _, signature = jwt.encode(claims(cid="other"), SECRET, algorithm="HS256").split(".")
    return f"{header}.{_b64(orjson.dumps(claims()))}.{signature}"


def _hs256(**replace: Any) -> str:
    return jwt.encode(claims(**replace), SECRET, algorithm="HS256")


BAD_TOKENS: dict[str, tuple[AuthConfig, Callable[[], str]]] = {
    "forged claims": (HS256, _forged),
    "expired": (HS256, lambda: _hs256(exp=int(time.time()) - 60)),
    "alg none": (HS256, lambda: handmade({"alg": "none", "typ": "JWT"}, claims(), None)),
    "alg none, signature kept": (HS256, lambda: handmade({"alg": "none"}, claims(), b"x" * 32)),
    "wrong secret": (HS256, lambda: jwt.encode(claims(), "y" * 40, algorithm="HS256")),
    "RS256 to an HS256 node": (HS256, lambda: jwt.encode(claims(), RSA_KEY, algorithm="RS256")),
    "HS256 to an RS256 node": (RS256, lambda: _hs256()),
    "HS256 keyed with the public PEM": (
        RS256, lambda: handmade({"alg": "HS256", "typ": "JWT"}, claims(), RSA_PEM.encode())),
    "ES256 to an RS256 node": (RS256, lambda: jwt.encode(claims(), EC_KEY, algorithm="ES256")),
    "RS256 by another key": (RS256,
                             lambda: jwt.encode(claims(), OTHER_RSA_KEY, algorithm="RS256")),
    "RS256 expired": (RS256, lambda: jwt.encode(claims(exp=int(time.time()) - 60), RSA_KEY,
                                                algorithm="RS256")),
    "HS256 to an ES256 node": (ES256, lambda: _hs256()),
    "RS256 to an ES256 node": (ES256, lambda: jwt.encode(claims(), RSA_KEY, algorithm="RS256")),
    "ES256 to an HS256 node": (HS256, lambda: jwt.encode(claims(), EC_KEY, algorithm="ES256")),
    "garbage": (HS256, lambda: "not.a.token"),
}


def _good(auth: AuthConfig) -> str:
    if auth.secret:
        return _hs256()
    if auth is ES256:
        return jwt.encode(claims(), EC_KEY, algorithm="ES256")
    return jwt.encode(claims(), RSA_KEY, algorithm="RS256")


WAYS_IN: dict[str, Callable[[str], tuple[str, list[tuple[str, str]]]]] = {
    "ws ?token=": lambda token: (f"/ws?token={token}", list(UPGRADE)),
    "ws bearer": lambda token: ("/ws", [*UPGRADE, ("Authorization", f"Bearer {token}")]),
    "ws cookie": lambda token: ("/ws", [*UPGRADE, ("Cookie", f"a=b; zuulpush_token={token}")]),
    "sse ?token=": lambda token: (f"/sse?token={token}", []),
    "sse bearer": lambda token: ("/sse", [("Authorization", f"Bearer {token}")]),
}


def _edge_answer(auth: AuthConfig, target: str, headers: list[tuple[str, str]],
                 split: bool) -> tuple[int, Any, Edge]:
    edge = Edge()
    edge.server.verifier = TokenVerifier(auth)
    device = edge.device()
    data = request(target, headers)
    if split:  # the head over two reads: h11 parses it, not fasthead
        device.send(data[:20])
        device.send(data[20:])
    else:
        device.send(data)
    response = parse_response(device.transport.written)
    body = orjson.loads(response.body) if response.status >= 400 else None
    return response.status, body, edge


@pytest.mark.parametrize("split", [False, True], ids=["one read", "split"])
@pytest.mark.parametrize("way", list(WAYS_IN))
@pytest.mark.parametrize("kind", list(BAD_TOKENS))
def test_a_bad_token_is_401_at_the_edge_before_any_upgrade(kind: str, way: str,
                                                           split: bool) -> None:
    auth, make = BAD_TOKENS[kind]
    target, headers = WAYS_IN[way](make())
    status, body, edge = _edge_answer(auth, target, headers, split)
    assert (status, body["error"]["code"]) == (401, "invalid_token"), (kind, way, body)
    assert edge.server.connections == {} and edge.server.stats.connects == 0


@pytest.mark.parametrize("split", [False, True], ids=["one read", "split"])
@pytest.mark.parametrize("way", list(WAYS_IN))
@pytest.mark.parametrize("auth", [HS256, RS256, ES256], ids=["HS256", "RS256", "ES256"])
def test_the_good_token_is_accepted_the_same_ways(auth: AuthConfig, way: str,
                                                  split: bool) -> None:
    """The control: what the test above refuses is only the token."""
    target, headers = WAYS_IN[way](_good(auth))
    status, _, edge = _edge_answer(auth, target, headers, split)
    assert status in (101, 200)
    [conn] = edge.server.connections.values()
    assert conn.state is State.REPLAYING and conn.registration is not None
    assert conn.registration.client_id == CID


@pytest.fixture
async def inbox_api() -> AsyncIterator[Callable[[AuthConfig], Any]]:
    clients: list[TestClient[Any, Any]] = []
    queues: list[MemoryQueue] = []

    async def start(auth: AuthConfig) -> tuple[TestClient[Any, Any], MemoryInbox]:
        inbox = MemoryInbox(100, clock_ms=lambda: NOW_MS)
        await inbox.add([CID], InboxEntry("M0001", b'{"id":"M0001"}', NOW_MS + 60_000))
        queue = MemoryQueue(600.0)
        app = create_api_app(config=ApiConfig(), auth=auth, queue=queue,
                             registry=MemoryRegistry(), inbox=inbox, clock_ms=lambda: NOW_MS)
        http: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1", port=0))
        await http.start_server()
        clients.append(http)
        queues.append(queue)
        return http, inbox

    yield start
    for http in clients:
        await http.close()
    for queue in queues:
        await queue.close()


@pytest.mark.parametrize("kind", list(BAD_TOKENS))
async def test_a_bad_token_is_401_at_the_inbox_api_which_reads_and_removes_nothing(
        inbox_api: Any, kind: str) -> None:
    auth, make = BAD_TOKENS[kind]
    http, inbox = await inbox_api(auth)
    token = make()
    for response in (
        await http.get("/v1/inbox", headers={"Authorization": f"Bearer {token}"}),
        await http.get(f"/v1/inbox?token={token}"),
        await http.post("/v1/inbox/ack", json={"through": "M9999"},
                        headers={"Authorization": f"Bearer {token}"}),
    ):
        body = await response.json()
        assert (response.status, body["error"]["code"]) == (401, "invalid_token"), kind
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert "messages" not in body
    assert [e.id for e in await inbox.after(CID, None, 10)] == ["M0001"]
    good = await http.get("/v1/inbox", headers={"Authorization": f"Bearer {_good(auth)}"})
    assert [m["id"] for m in (await good.json())["messages"]] == ["M0001"]


async def test_keys_do_not_stand_in_for_each_other(inbox_api: Any) -> None:
    """The API key is no device token and no admin key; a device token is no API key."""
    http, _ = await inbox_api(HS256)
    response = await http.get("/v1/inbox", headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status == 401
    push = {"to": {"clients": [CID]}, "data": None}
    response = await http.post("/v1/push", json=push,
                               headers={"Authorization": f"Bearer {_hs256()}"})
    body = await response.json()
    assert (response.status, body["error"]["code"]) == (403, "forbidden")
    edge = Edge()
    edge.server.admin_key = ADMIN_KEY
    for key in (API_KEY, _hs256()):
        admin = edge.device()
        admin.send(request("/admin/status", [("Authorization", f"Bearer {key}")]))
        answer = admin.response()
        assert (answer.status, answer.json()["error"]["code"]) == (403, "forbidden")
