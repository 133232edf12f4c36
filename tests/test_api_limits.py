"""The push-send API's abuse limits (aiohttp test client, memory seams, a clock moved by hand):
each API key's push rate (429 with Retry-After, a batch costing its messages, other keys
unaffected) and the batch size, with the counters and metrics behind them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from core.ratelimit import KeyRates, TokenBucket
from core.tokens import AuthConfig, check_key
from registry.memory import MemoryRegistry
from router.api.app import ApiStats, create_api_app
from router.config import ApiConfig
from router.stores.memory import MemoryQueue
from zuulpush.metrics import Exporter, Metrics

KEYS = ("key-zero-secret", "key-one-secret")
CONFIG = ApiConfig(max_batch=4, api_key_rate_per_s=2.0, api_key_burst=4)
ONE = {"to": {"clients": ["c1"]}, "data": 1}


@dataclass
class Api:
    http: TestClient[Any, Any]
    stats: ApiStats
    clock: list[float]  # seconds

    async def post(self, path: str, body: Any, key: str = KEYS[0]) -> tuple[int, Any, Any]:
        response = await self.http.post(path, json=body,
                                         headers={"Authorization": f"Bearer {key}"})
        return response.status, await response.json(), response.headers

    async def push(self, key: str = KEYS[0]) -> tuple[int, Any, Any]:
        return await self.post("/v1/push", ONE, key)

    async def batch(self, n: int, key: str = KEYS[0]) -> tuple[int, Any, Any]:
        return await self.post("/v1/push/batch", {"messages": [ONE] * n}, key)


async def start(config: ApiConfig) -> Api:
    clock = [1000.0]
    stats = ApiStats()
    app = create_api_app(config=config, auth=AuthConfig(api_keys=KEYS, admin_key="admin"),
                         queue=MemoryQueue(600.0), registry=MemoryRegistry(), stats=stats,
                         clock_ms=lambda: int(clock[0] * 1000))
    http: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1", port=0))
    await http.start_server()
    return Api(http, stats, clock)


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    api = await start(CONFIG)
    yield api
    await api.http.close()


async def test_a_key_over_its_rate_gets_429_with_retry_after(api: Api) -> None:
    for _ in range(4):
        assert (await api.push())[0] == 202
    status, body, headers = await api.push()
    assert status == 429
    assert body["error"]["code"] == "rate_limited"
    assert headers["Retry-After"] == "1"  # half a second at 2/s, in whole seconds
    assert (await api.push(KEYS[1]))[0] == 202  # the other key has its own bucket
    api.clock[0] += 0.5
    assert (await api.push())[0] == 202
    assert api.stats.rate_limited == {0: 1}
    assert api.stats.rejected == {429: 1}


async def test_a_batch_costs_its_messages(api: Api) -> None:
    assert (await api.batch(3))[0] == 202
    status, _, headers = await api.batch(2)  # one token left, two needed
    assert status == 429
    assert headers["Retry-After"] == "1"
    assert (await api.push())[0] == 202  # the one left
    api.clock[0] += 2.0  # four more
    assert (await api.batch(4))[0] == 202


async def test_an_invalid_batch_costs_nothing(api: Api) -> None:
    status, _, _ = await api.post("/v1/push/batch", {"messages": [{"data": 1}]})
    assert status == 400
    assert (await api.batch(4))[0] == 202


async def test_an_empty_bucket_refuses_a_batch_before_its_body(api: Api) -> None:
    assert (await api.batch(4))[0] == 202
    status, _, _ = await api.post("/v1/push/batch", {"messages": "not even valid"})
    assert status == 429  # not 400: the body was never read


async def test_without_a_rate_there_is_no_limit() -> None:
    api = await start(ApiConfig(max_batch=4))
    try:
        for _ in range(20):
            assert (await api.batch(4))[0] == 202
    finally:
        await api.http.close()


async def test_the_dashboard_push_is_not_limited(api: Api) -> None:
    assert (await api.batch(4))[0] == 202
    response = await api.http.post("/dashboard/push", json=ONE, headers={
        "Authorization": "Bearer admin", "X-Zuulpush-Dashboard": "1"})
    assert response.status == 202


async def test_an_oversized_batch_is_400_and_counted(api: Api) -> None:
    status, body, _ = await api.batch(5)
    assert status == 400
    assert body["error"]["field"] == "messages"
    assert api.stats.batch_too_large == 1


async def test_limits_reach_their_metrics_labelled_by_key_position(api: Api) -> None:
    await api.batch(4, KEYS[1])
    await api.push(KEYS[1])
    await api.batch(5)
    metrics = Metrics(CollectorRegistry())
    exporter = Exporter(metrics)
    exporter.watch_api(api.stats)
    page = exporter.page()[0].decode()
    assert 'zuulpush_api_rate_limited_total{key="1"} 1.0' in page
    assert "zuulpush_api_batch_too_large_total 1.0" in page
    assert not any(key in page for key in KEYS)


def test_a_rate_needs_a_burst_of_at_least_a_full_batch() -> None:
    with pytest.raises(ValueError, match="api_key_burst"):
        ApiConfig(max_batch=500, api_key_rate_per_s=10.0, api_key_burst=100)
    with pytest.raises(ValueError, match="api_key_rate_per_s"):
        ApiConfig(api_key_rate_per_s=-1.0)
    ApiConfig(max_batch=500, api_key_burst=100)  # no rate: no limit to meet


def test_check_key_names_the_key_by_its_position() -> None:
    assert check_key("b", ("a", "b", "c")) == 1
    assert check_key("a", ("a", "a")) == 0


def test_token_bucket_costs_are_all_or_nothing() -> None:
    bucket = TokenBucket(2.0, 4, now=0.0)
    assert bucket.take(0.0, 3)
    assert not bucket.take(0.0, 2)
    assert bucket.wait_s(0.0, 2) == pytest.approx(0.5)
    assert bucket.take(0.5, 2)


def test_key_rates_keep_a_bucket_per_key() -> None:
    rates = KeyRates(1.0, 2)
    assert rates.charge(0, 2, 0.0) == 0.0
    assert rates.charge(0, 1, 0.0) == pytest.approx(1.0)
    assert rates.wait_s(1, 1, 0.0) == 0.0 and rates.charge(1, 2, 0.0) == 0.0
    assert KeyRates(0.0, 1).charge(0, 100, 0.0) == 0.0
