"""zuulpush.client: the device SDK (asyncio, on aiohttp's client).

Layout: `backoff`, `policy`, `wire`, `dedup` and `sse` are sans I/O (no sockets, no awaits).
"""
