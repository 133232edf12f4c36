"""`PushClient`: one device's connection to the edge, kept up for as long as the client runs.

The I/O half of the SDK. One task per client runs the connect / serve / wait cycle; while a
WebSocket is up a second task batches acks. What to do after each connection ends is decided by
`policy.ReconnectPolicy` (sans I/O); frames are parsed by `wire`, repeats dropped by `dedup`.

Processing and acks. A message is *processed* when the `on_message` callback returns (also if it
raised: the error is logged, and the message is not delivered again, so one bad message cannot
wedge the device), or, when iterating, when the next message is asked for. With `auto_ack` (the
default) a processed message is acked: over WebSocket its id is sent in an ack frame within
`ack_delay_s` (one frame for up to 1000 ids), so the edge removes it from the inbox. Over SSE there
is no upstream: the resume point is the ack. With `auto_ack=False` the application calls
`ack(message)` itself; only acked messages move the resume point.

Resume. The client remembers the last message it processed (acked, with `auto_ack=False`; with
acks out of order, the last before the first one still open: `resume.ResumePoint`) and
reconnects with it (`?last_id=` / `Last-Event-ID`); the edge removes from the inbox what it gave
the device up to it and replays the rest, oldest first, older messages that reached the inbox
late included. Repeats (at least once delivery) are dropped by id. The resume point is
`last_id`; an application that persists it and passes it back (`last_id=`) resumes across
restarts.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import inspect
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Self

import aiohttp

from zuulpush.client.backoff import Backoff
from zuulpush.client.dedup import Deduper
from zuulpush.client.errors import PushClientError
from zuulpush.client.policy import Closed, Failed, Outcome, ReconnectPolicy, Retry, Stop
from zuulpush.client.resume import ResumePoint
from zuulpush.client.transport import TRANSPORTS, ConnectFailed, Frame, Link, SslOption
from zuulpush.client.wire import MalformedMessage, Message, ack_frames, endpoint, parse_message

log = logging.getLogger("zuulpush.client")

TokenSource = str | Callable[[], str | Awaitable[str]]
MessageHandler = Callable[[Message], Awaitable[None] | None]
StateHandler = Callable[["ClientState"], None]


class ClientState(enum.Enum):
    IDLE = "idle"              # made, not started
    CONNECTING = "connecting"  # opening a connection (token, TCP, handshake)
    CONNECTED = "connected"    # receiving
    WAITING = "waiting"        # between connections: backoff or a server's hint
    CLOSED = "closed"          # stopped by close() or for good (see `error`)


@dataclass(slots=True)
class ClientStats:
    """Counters since the client was made."""

    connects: int = 0          # connections that got through the handshake
    reconnects: int = 0        # of those, the ones after the first
    messages: int = 0          # messages handed to the application (repeats not counted)
    duplicates: int = 0        # repeats dropped by id
    malformed: int = 0         # frames or events that were not a message (skipped)
    acks_sent: int = 0         # ids acked over WebSocket
    token_refreshes: int = 0   # calls to the token provider after the first
    last_close_code: int | None = None
    last_close_reason: str = ""
    last_delay_s: float | None = None  # the most recent wait before reconnecting


class PushClient:
    """A device's push connection that reconnects and resumes by itself.

    `url` is the edge's base URL (`http://host:port`, `https://...`, `ws(s)://` also accepted,
    with a path prefix if the edge sits behind one). `token` is a device token, or a function
    (plain or async) returning one: it is called before the first connection and again whenever
    the edge answers 401 (the first time the client retries at once, then with backoff). A plain
    string that gets a 401 stops the client with AuthError.

    Receive with `on_message` (plain or async; messages are handled one at a time, in order) or
    by iterating: `async for message in client`. Use one of the two.

    Options (keyword only): `transport` "ws" (default) or "sse"; `auto_ack`; `ack_delay_s`
    (ack batching); `last_id` (resume point to start from); `backoff` (`Backoff`: base, cap,
    reset, hint cap); `reconnect=False` for exactly one connection; `idle_timeout_s` (silence,
    heartbeats included, after which a connection counts as dead: 2.5x the server's
    `heartbeat_interval_s` of 30 s by default; None disables); `connect_timeout_s`;
    `max_pending` (messages received but not yet iterated; past it the client stops reading
    until the application catches up: the edge, meanwhile, may close the connection as a slow
    consumer and keep the rest in the inbox);
    `dedup_capacity` (ids remembered for dropping repeats); `ssl` (aiohttp's); `on_state`
    (called on every `ClientState` change); `rng` (for seeded jitter in tests).
    """

    def __init__(
        self,
        url: str,
        token: TokenSource,
        *,
        transport: str = "ws",
        on_message: MessageHandler | None = None,
        on_state: StateHandler | None = None,
        last_id: str | None = None,
        auto_ack: bool = True,
        ack_delay_s: float = 0.1,
        backoff: Backoff | None = None,
        reconnect: bool = True,
        idle_timeout_s: float | None = 75.0,
        connect_timeout_s: float = 10.0,
        max_pending: int = 1000,
        dedup_capacity: int = 10_000,
        ssl: SslOption = True,
        rng: random.Random | None = None,
    ) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {sorted(TRANSPORTS)}, not {transport!r}")
        endpoint(url, transport)  # ValueError now rather than at the first connection
        if max_pending < 1 or dedup_capacity <= max_pending:
            raise ValueError("need 1 <= max_pending < dedup_capacity")
        self.url = url
        self.transport = transport
        self._transport = TRANSPORTS[transport]
        self._token_source = token
        self._token: str | None = token if isinstance(token, str) else None
        self._on_message = on_message
        self._on_state = on_state
        self._auto_ack = auto_ack
        self._ack_delay_s = ack_delay_s
        self._idle_timeout_s = idle_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._ssl = ssl
        self._policy = ReconnectPolicy(backoff or Backoff(), can_refresh=callable(token),
                                       reconnect=reconnect, rng=rng)
        self._dedup = Deduper(dedup_capacity)
        self._mailbox = _Mailbox(max_pending)
        self._pending_acks: list[str] = []
        self._acks_due = asyncio.Event()
        self._max_pending_acks = dedup_capacity
        self._resume = ResumePoint(last_id, capacity=dedup_capacity)
        self._in_hand: Message | None = None
        self._in_callback = False
        self._stopping = False
        self._state = ClientState.IDLE
        self._connected = asyncio.Event()
        self._done = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self.error: PushClientError | None = None
        """Why the client stopped for good (None while running, or after `close()`)."""
        self.stats = ClientStats()

    # state

    @property
    def state(self) -> ClientState:
        return self._state

    @property
    def connected(self) -> bool:
        return self._state is ClientState.CONNECTED

    @property
    def last_id(self) -> str | None:
        """The resume point: the id of the last message processed (acked with auto_ack off), or
        with acks out of order, of the last one before the first received and not yet acked
        (`resume.ResumePoint`)."""
        return self._resume.value

    # lifecycle

    async def start(self) -> None:
        """Start connecting in the background and return at once (see `wait_connected`)."""
        if self._state is not ClientState.IDLE:
            raise RuntimeError("a PushClient starts once")
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=self._connect_timeout_s))
        self._task = asyncio.get_running_loop().create_task(self._run(), name="zuulpush.client")
        self._set_state(ClientState.CONNECTING)

    async def close(self) -> None:
        """Stop: send the acks still due, close the connection (WebSocket close 1000), release
        everything. Iteration ends; messages received but not yet processed are not acked (the
        edge delivers them again next time). Safe to call more than once, and from `on_message`
        (then the client stops once the callback returns)."""
        self._stopping = True
        task = self._task
        if task is None:
            self._finish(None)
            return
        if task is asyncio.current_task():
            return
        if self._in_callback:
            # let the application's callback finish rather than cancel it midway
            await asyncio.wait({task}, timeout=self._connect_timeout_s)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        """Close. Leaving the block normally (also by `break` out of `async for`) counts the
        message in hand as processed; leaving it by an exception does not."""
        if exc_type is None and self._in_hand is not None and self._auto_ack:
            self.ack(self._in_hand)
            self._in_hand = None
        await self.close()

    async def wait_connected(self, timeout_s: float | None = None) -> None:
        """Return once a connection is up. TimeoutError after `timeout_s`; the error that
        stopped the client (or RuntimeError after `close()`) if it stops first."""
        async with asyncio.timeout(timeout_s):
            while not self.connected:
                if self._done.is_set():
                    raise self.error or RuntimeError("the client is closed")
                await self._connected.wait()  # set while connected, and once stopped

    async def wait_closed(self) -> None:
        """Return when the client has stopped; raise the error that stopped it, if any."""
        await self._done.wait()
        if self.error is not None:
            raise self.error

    # receiving

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Message:
        """The next message. Asking for it marks the previous one processed (acked, with
        auto_ack). Ends after `close()`; raises the error that stopped the client, once the
        messages already received have been handed out."""
        if self._on_message is not None:
            raise RuntimeError("this client hands messages to on_message; do not iterate")
        if self._state is ClientState.IDLE:
            raise RuntimeError("start the client first (await start() or async with)")
        if self._in_hand is not None:
            if self._auto_ack:
                self.ack(self._in_hand)
            self._in_hand = None
        message = await self._mailbox.get()
        self._in_hand = message
        return message

    def ack(self, message: Message | str) -> None:
        """Mark a message (or id) processed: it becomes the resume point, and over WebSocket its
        ack is sent within `ack_delay_s`. Needed only with `auto_ack=False`, harmless otherwise."""
        message_id = message if isinstance(message, str) else message.id
        self._dedup.mark_processed(message_id)
        self._resume.processed(message_id)
        if self._transport.can_ack:
            self._queue_ack(message_id)

    def _queue_ack(self, message_id: str) -> None:
        if len(self._pending_acks) >= self._max_pending_acks:
            # offline for long: resuming after the resume point removes what the edge gave
            del self._pending_acks[:len(self._pending_acks) // 2]
        self._pending_acks.append(message_id)
        self._acks_due.set()

    # the connection cycle

    async def _run(self) -> None:
        error: PushClientError | None = None
        try:
            while not self._stopping:
                outcome = await self._attempt()
                if self._stopping:
                    break
                decision = self._policy.decide(outcome)
                if isinstance(decision, Stop):
                    error = decision.error
                    if error is not None:
                        log.error("push client stopped: %s", error)
                    break
                await self._wait(decision, failed=isinstance(outcome, Failed))
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # a bug here must not leave iterators waiting forever
            log.exception("push client failed")
            error = PushClientError(f"push client failed: {exc!r}")
        finally:
            if self._http is not None:
                await self._http.close()
            self._finish(error)

    async def _attempt(self) -> Outcome:
        """One connection: token, handshake, then serve it until it ends."""
        self._set_state(ClientState.CONNECTING)
        try:
            token = await self._current_token()
        except Exception as exc:
            log.warning("token provider failed: %r", exc)
            return Failed(None, f"token provider failed: {exc!r}")
        assert self._http is not None
        try:
            link = await self._transport.open(
                self._http, self.url, token, last_id=self._resume.value,
                timeout_s=self._connect_timeout_s, ssl=self._ssl)
        except ConnectFailed as exc:
            return exc.outcome
        return await self._serve(link)

    async def _current_token(self) -> str:
        if self._token is None:
            source = self._token_source
            assert callable(source)
            token = source()
            if inspect.isawaitable(token):
                token = await token
            if not isinstance(token, str) or not token:
                raise TypeError(f"the token provider returned {type(token).__name__}, not a "
                                "non-empty str")
            self._token = token
        return self._token

    async def _serve(self, link: Link) -> Closed:
        self._policy.connected()
        self.stats.connects += 1
        if self.stats.connects > 1:
            self.stats.reconnects += 1
        self._set_state(ClientState.CONNECTED)
        started = time.monotonic()
        flusher = (asyncio.get_running_loop().create_task(self._flush_loop(link))
                   if self._transport.can_ack else None)
        closed = Closed(None, "client closing")
        try:
            while not self._stopping:
                item = await link.receive(self._idle_timeout_s)
                if isinstance(item, Closed):
                    closed = item
                    break
                await self._handle(item)
        finally:
            self._connected.clear()
            if not self._stopping:
                self._set_state(ClientState.WAITING)
            if flusher is not None:
                flusher.cancel()
                await asyncio.gather(flusher, return_exceptions=True)
                if self._stopping:
                    await self._send_acks(link)
            await link.close()
        self.stats.last_close_code, self.stats.last_close_reason = closed.code, closed.reason
        return replace(closed, up_s=time.monotonic() - started)

    async def _handle(self, frame: Frame) -> None:
        try:
            message = parse_message(frame.raw, fallback_id=frame.event_id)
        except MalformedMessage as exc:
            self.stats.malformed += 1
            log.warning("skipping a frame that is not a message (%s): %.200s", exc, frame.raw)
            return
        if not self._dedup.admit(message.id):
            self.stats.duplicates += 1
            if self._dedup.processed(message.id) and self._transport.can_ack:
                self._queue_ack(message.id)  # handled before, and the edge still has it
            return
        self.stats.messages += 1
        self._resume.received(message.id)
        if self._on_message is None:
            await self._mailbox.put(message)
            return
        self._in_callback = True
        try:
            result = self._on_message(message)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("on_message raised on message %s; it counts as processed", message.id)
        finally:
            self._in_callback = False
        if self._auto_ack:
            self.ack(message)

    async def _flush_loop(self, link: Link) -> None:
        while True:
            await self._acks_due.wait()
            await asyncio.sleep(self._ack_delay_s)
            await self._send_acks(link)

    async def _send_acks(self, link: Link) -> None:
        self._acks_due.clear()
        ids, self._pending_acks = self._pending_acks, []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._connect_timeout_s):
                for frame in ack_frames(ids):
                    await link.send_ack(frame)
        self.stats.acks_sent += len(ids)

    async def _wait(self, decision: Retry, *, failed: bool) -> None:
        if decision.refresh_token:
            self._token = None
            self.stats.token_refreshes += 1
        level = (logging.ERROR if decision.client_bug
                 else logging.WARNING if failed else logging.INFO)
        log.log(level, "reconnecting in %.2f s: %s%s", decision.delay_s, decision.why,
                " (a client bug: it broke the protocol)" if decision.client_bug else "")
        self.stats.last_delay_s = decision.delay_s
        self._set_state(ClientState.WAITING)
        await asyncio.sleep(decision.delay_s)

    def _set_state(self, state: ClientState) -> None:
        if state is self._state:
            return
        self._state = state
        if state is ClientState.CONNECTED:
            self._connected.set()
        if self._on_state is not None:
            try:
                self._on_state(state)
            except Exception:
                log.exception("on_state raised")

    def _finish(self, error: PushClientError | None) -> None:
        if self._done.is_set():
            return
        self.error = error
        # after close(), unprocessed messages are dropped; after a stop, they are handed out
        self._mailbox.finish(error, drop=self._stopping)
        self._set_state(ClientState.CLOSED)
        self._done.set()
        self._connected.set()  # wakes wait_connected(), which then raises


class _Mailbox:
    """Messages received and not yet iterated: a bounded FIFO for one reader, which ends with
    StopAsyncIteration or an error once `finish()` was called and it is empty."""

    __slots__ = ("_end", "_ended", "_items", "_readable", "_size", "_writable")

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: collections.deque[Message] = collections.deque()
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._ended = False
        self._end: BaseException | None = None

    async def put(self, message: Message) -> None:
        while len(self._items) >= self._size and not self._ended:
            self._writable.clear()
            await self._writable.wait()
        self._items.append(message)
        self._readable.set()

    async def get(self) -> Message:
        while not self._items:
            if self._ended:
                raise self._end or StopAsyncIteration
            self._readable.clear()
            await self._readable.wait()
        self._writable.set()
        return self._items.popleft()

    def finish(self, error: BaseException | None, *, drop: bool) -> None:
        self._ended = True
        self._end = error
        if drop:
            self._items.clear()
        self._readable.set()
        self._writable.set()
