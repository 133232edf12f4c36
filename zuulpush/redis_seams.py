"""The router's Redis seams as a fleet's processes open them, from their configuration."""

from __future__ import annotations

from router.config import RouterConfig
from router.stores.redis_channel import RedisNodeChannel
from router.stores.redis_history import RedisBroadcastLog
from router.stores.redis_inbox import RedisInbox
from router.stores.redis_process_stats import RedisProcessStats
from router.stores.redis_queue import RedisQueue
from zuulpush.config import FleetConfig


def redis_queue(url: str, router: RouterConfig, fleet: FleetConfig) -> RedisQueue:
    return RedisQueue.from_url(url, prefix=fleet.router_prefix,
                               dedup_window_s=router.dedup_window_s,
                               claim_idle_s=fleet.claim_idle_s, max_depth=fleet.queue_max_depth)


def redis_inbox(url: str, router: RouterConfig, fleet: FleetConfig, *,
                peered: bool = False) -> RedisInbox:
    """`peered`: the inbox of one region of several (`router.base.Inbox.resume_many`)."""
    return RedisInbox.from_url(url, prefix=fleet.router_prefix,
                               max_per_client=router.inbox_max_per_client, peered=peered)


def redis_history(url: str, router: RouterConfig, fleet: FleetConfig) -> RedisBroadcastLog:
    return RedisBroadcastLog.from_url(url, prefix=fleet.router_prefix,
                                      max_entries=router.broadcast_history_max)


def redis_channel(url: str, fleet: FleetConfig) -> RedisNodeChannel:
    return RedisNodeChannel.from_url(url, prefix=fleet.router_prefix)


def redis_process_stats(url: str, fleet: FleetConfig) -> RedisProcessStats:
    return RedisProcessStats.from_url(url, prefix=fleet.router_prefix)
