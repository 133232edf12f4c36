/**
 * zuulpush.js: the browser client of a zuulpush edge. One ES module, no dependencies, no build.
 *
 *   import { ZuulpushClient } from "/static/zuulpush.js";
 *   const client = new ZuulpushClient("http://127.0.0.1:8080", { token });
 *   client.addEventListener("message", (e) => console.log(e.detail.id, e.detail.data));
 *   client.start();
 *
 * It keeps one connection up: WebSocket (`/ws`), or Server-Sent Events (`/sse`) when a WebSocket
 * cannot connect (transport "auto"). It reconnects with exponential backoff and full jitter,
 * honours the server's hints (close 4000-4099 `reconnect_after_ms`, the SSE `reconnect` event,
 * `Retry-After`), stops when replaced by a newer connection of its client id (4003), asks a token
 * provider for a new token after a 401, resumes after the last message it delivered
 * (`?last_id=`), acks what it delivered (WebSocket, batched) and drops repeats by id.
 * The rules mirror the Python SDK (`zuulpush/client/policy.py`); every option and event is in
 * docs/browser-client.md.
 */

const REPLACED = 4003;
const MAX_ACK_IDS = 1000;

/** Why the client stopped for good: `kind` is "auth" (401, no token provider) or "replaced". */
export class ZuulpushError extends Error {
  constructor(kind, message, { status = null, code = null } = {}) {
    super(message);
    this.name = "ZuulpushError";
    this.kind = kind;
    this.status = status;
    this.code = code;
  }
}

/** Reconnect delays in ms: exponential backoff with full jitter, and the server's hints. */
export class Backoff {
  constructor({ baseMs = 1000, capMs = 60000, resetAfterMs = 30000, hintCapMs = 600000,
                random = Math.random } = {}) {
    if (!(baseMs > 0 && baseMs <= capMs)) throw new RangeError("Backoff needs 0 < baseMs <= capMs");
    Object.assign(this, { baseMs, capMs, resetAfterMs, hintCapMs, random });
  }

  /** The n-th consecutive failure (0 = first) waits uniform(0, min(capMs, baseMs * 2**n)). */
  delayMs(attempt) {
    return this.random() * Math.min(this.capMs, this.baseMs * 2 ** Math.min(attempt, 64));
  }

  /** A server minimum (Retry-After, SSE retry) plus a full-jitter draw. */
  afterFloorMs(floorMs, attempt) {
    return Math.min(Math.max(floorMs, 0), this.hintCapMs) + this.delayMs(attempt);
  }

  /** A go-away hint as it is (the server jittered it), capped. */
  hintedMs(hintMs) {
    return Math.min(Math.max(hintMs, 0), this.hintCapMs);
  }
}

/** What to do after a connection ended (`{opened: true, code, hintMs, floorMs, upMs}`) or an
 * attempt failed (`{opened: false, status, retryAfterMs}`): `{delayMs, refreshToken}` or
 * `{stop: ZuulpushError}`. Sans I/O, so it can be tested by itself. */
export class ReconnectPolicy {
  constructor(backoff, { canRefresh }) {
    this.backoff = backoff;
    this.canRefresh = canRefresh;
    this.attempt = 0;
    this.authRetried = false;
  }

  connected() { this.authRetried = false; }

  decide(outcome) {
    if (outcome.opened && outcome.upMs >= this.backoff.resetAfterMs) this.attempt = 0;
    const decision = outcome.opened ? this.#afterClose(outcome) : this.#afterFailure(outcome);
    this.attempt += 1;
    return decision;
  }

  #afterClose({ code, hintMs, floorMs }) {
    if (code === REPLACED) {
      return { stop: new ZuulpushError("replaced", "replaced by a newer connection of the same client id", { code }) };
    }
    if (hintMs != null) return { delayMs: this.backoff.hintedMs(hintMs), why: "server hint" };
    if (floorMs != null) return { delayMs: this.backoff.afterFloorMs(floorMs, this.attempt), why: "retry floor" };
    return { delayMs: this.backoff.delayMs(this.attempt), why: "backoff" };
  }

  #afterFailure({ status, retryAfterMs }) {
    if (status === 401) {
      if (!this.canRefresh) return { stop: new ZuulpushError("auth", "device token refused (401)", { status }) };
      if (!this.authRetried) {
        this.authRetried = true;
        return { delayMs: 0, refreshToken: true, why: "401" };
      }
      return { delayMs: this.backoff.delayMs(this.attempt), refreshToken: true, why: "401" };
    }
    if (retryAfterMs != null) return { delayMs: this.backoff.afterFloorMs(retryAfterMs, this.attempt), why: "Retry-After" };
    return { delayMs: this.backoff.delayMs(this.attempt), why: "backoff" };
  }
}

/** The last `capacity` ids seen (insertion order), each with whether it was delivered. */
export class Deduper {
  constructor(capacity = 10000) {
    this.capacity = capacity;
    this.ids = new Map();
  }

  /** True the first time an id is seen within the last `capacity` ids. */
  admit(id) {
    if (this.ids.has(id)) return false;
    this.ids.set(id, false);
    if (this.ids.size > this.capacity) this.ids.delete(this.ids.keys().next().value);
    return true;
  }

  markDelivered(id) { if (this.ids.has(id)) this.ids.set(id, true); }
  delivered(id) { return this.ids.get(id) === true; }
}

/** Seconds of an HTTP `Retry-After` (delta-seconds or an HTTP date) in ms; null if unreadable. */
export function parseRetryAfter(value, now = Date.now()) {
  if (!value) return null;
  if (/^\s*\d+\s*$/.test(value)) return Number(value) * 1000;
  const when = Date.parse(value);
  return Number.isNaN(when) ? null : Math.max(0, when - now);
}

/** The `exp` claim (seconds) of a JWT, or null; read without checking the signature. */
function tokenExpiry(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const exp = JSON.parse(atob(part + "=".repeat(-part.length & 3))).exp;
    return typeof exp === "number" ? exp : null;
  } catch {
    return null;
  }
}

const DEFAULTS = {
  token: null,
  transport: "auto",
  lastId: null,
  backoff: {},
  ackDelayMs: 100,
  dedupCapacity: 10000,
  connectTimeoutMs: 10000,
  sseRetryMs: 3000,
  reconnect: true,
};

/**
 * Keeps one device connected to a zuulpush edge. Events (an EventTarget; each a CustomEvent):
 * - `open`: a connection is up; `detail` `{transport, url}` (the token is left out of `url`).
 * - `message`: one new message; `detail` `{id, topic, ts, data, raw}`. Dispatched in order,
 *   once per id; acked (WebSocket) and made the resume point once the listeners have run.
 * - `reconnecting`: the connection is down (or an attempt failed) and the next attempt is due
 *   in `detail.delayMs`; also `transport`, `code`, `reason`, `status`, `why`.
 * - `close`: the client stopped for good; `detail.error` is a ZuulpushError (replaced, auth) or
 *   null after `close()`.
 */
export class ZuulpushClient extends EventTarget {
  constructor(edgeUrl, options = {}) {
    super();
    const opts = { ...DEFAULTS, ...options };
    if (!["auto", "ws", "sse"].includes(opts.transport)) throw new TypeError(`unknown transport ${opts.transport}`);
    if (!opts.token) throw new TypeError("a token (string) or a token provider (function) is needed");
    this.edgeUrl = String(edgeUrl).replace(/\/+$/, "");
    this.options = opts;
    this.lastId = opts.lastId;
    this.state = "idle"; // idle, connecting, open, waiting, closed
    this.transport = null; // "ws" or "sse" while connecting or open
    this.error = null;
    this.stats = { connects: 0, reconnects: 0, messages: 0, duplicates: 0, malformed: 0,
                   acksSent: 0, tokenRefreshes: 0, fallbacks: 0, lastCloseCode: null, lastDelayMs: null };
    this._policy = new ReconnectPolicy(
      opts.backoff instanceof Backoff ? opts.backoff : new Backoff(opts.backoff),
      { canRefresh: typeof opts.token === "function" });
    this._dedup = new Deduper(opts.dedupCapacity);
    this._token = typeof opts.token === "function" ? null : opts.token;
    this._wsBlocked = opts.transport === "sse";
    this._conn = null; // {kind, socket, openedAt, connectTimer, hintMs, code, reason, done}
    this._timer = null;
    this._ackIds = [];
    this._ackTimer = null;
  }

  /** Start connecting (in the background). Calling it again does nothing. */
  start() {
    if (this.state !== "idle") return this;
    this._connect(typeof this.options.token === "function");
    return this;
  }

  /** Send the acks due, close the connection (WebSocket code 1000) and stop for good. */
  close() {
    if (this.state === "closed") return;
    this._flushAcks();
    this._stop(null);
  }

  // connecting

  async _connect(refreshToken) {
    this.state = "connecting";
    if (refreshToken || this._tokenExpired()) {
      if (typeof this.options.token !== "function") {
        this._stop(new ZuulpushError("auth", "device token expired", { status: 401 }));
        return;
      }
      try {
        this._token = await this.options.token();
        this.stats.tokenRefreshes += 1;
      } catch (error) {
        this._retry({ delayMs: this._policy.backoff.delayMs(this._policy.attempt++), why: `token provider failed: ${error}` }, {});
        return;
      }
      if (this.state !== "connecting") return; // closed meanwhile
    }
    const useWs = this.options.transport === "ws" || !this._wsBlocked;
    useWs ? this._openWebSocket() : this._openEventSource();
  }

  _tokenExpired() {
    const exp = this._token ? tokenExpiry(this._token) : null;
    return exp !== null && exp * 1000 <= Date.now();
  }

  _url(path, scheme) {
    const base = scheme === "ws" ? this.edgeUrl.replace(/^http/, "ws") : this.edgeUrl.replace(/^ws/, "http");
    let url = `${base}${path}?token=${encodeURIComponent(this._token)}`;
    if (this.lastId) url += `&last_id=${encodeURIComponent(this.lastId)}`;
    return url;
  }

  _begin(kind, socket, url) {
    const conn = { kind, socket, url, openedAt: null, hintMs: null, code: null, reason: "", done: false };
    conn.connectTimer = setTimeout(() => this._ended(conn, {}), this.options.connectTimeoutMs);
    this._conn = conn;
    this.transport = kind;
    return conn;
  }

  _openWebSocket() {
    const url = this._url("/ws", "ws");
    let socket;
    try {
      socket = new WebSocket(url);
    } catch {
      this._ended(this._begin("ws", null, url), {});
      return;
    }
    const conn = this._begin("ws", socket, url);
    socket.onopen = () => this._opened(conn);
    socket.onmessage = (event) => this._received(conn, event.data);
    socket.onclose = (event) => this._ended(conn, { code: event.code, reason: event.reason });
  }

  _openEventSource() {
    const url = this._url("/sse", "http");
    const source = new EventSource(url);
    const conn = this._begin("sse", source, url);
    source.onopen = () => this._opened(conn);
    source.addEventListener("message", (event) => this._received(conn, event.data));
    source.addEventListener("reconnect", (event) => {
      // The edge ends the stream after this event: {code, reason, reconnect_after_ms}.
      const hint = parseJson(event.data) || {};
      this._ended(conn, { code: hint.code ?? null, reason: hint.reason ?? "", hintMs: hint.reconnect_after_ms });
    });
    // EventSource would reconnect by itself, without backoff or a resume point of ours: end it.
    source.onerror = () => this._ended(conn, {});
  }

  _opened(conn) {
    if (conn !== this._conn || conn.done) return;
    clearTimeout(conn.connectTimer);
    conn.openedAt = Date.now();
    this.state = "open";
    this.stats.connects += 1;
    this._policy.connected();
    this.dispatchEvent(new CustomEvent("open", { detail: { transport: conn.kind, url: conn.url.replace(/token=[^&]*/, "token=...") } }));
    if (conn.kind === "ws") this._flushAcks();
  }

  // messages

  _received(conn, text) {
    if (conn !== this._conn || conn.done || this.state === "closed") return;
    const message = parseJson(text);
    if (!message || typeof message.id !== "string") {
      this.stats.malformed += 1;
      return;
    }
    if (!this._dedup.admit(message.id)) {
      this.stats.duplicates += 1;
      if (this._dedup.delivered(message.id)) this._ack(message.id); // the edge still holds it
      return;
    }
    this.stats.messages += 1;
    const detail = { id: message.id, topic: message.topic, ts: message.ts, data: message.data, raw: text };
    try {
      this.dispatchEvent(new CustomEvent("message", { detail }));
    } finally {
      // A listener that throws must not wedge the device in a redelivery loop.
      this._dedup.markDelivered(message.id);
      this.lastId = message.id;
      this._ack(message.id);
    }
  }

  _ack(id) {
    if (this._wsBlocked) return; // SSE has no upstream: the resume point is the ack
    this._ackIds.push(id);
    if (this._ackIds.length > this.options.dedupCapacity) this._ackIds.shift();
    if (this._ackTimer === null) this._ackTimer = setTimeout(() => this._flushAcks(), this.options.ackDelayMs);
  }

  _flushAcks() {
    clearTimeout(this._ackTimer);
    this._ackTimer = null;
    const conn = this._conn;
    if (!conn || conn.kind !== "ws" || conn.openedAt === null || conn.done) return; // kept for the next one
    while (this._ackIds.length) {
      const ids = this._ackIds.splice(0, MAX_ACK_IDS);
      conn.socket.send(JSON.stringify({ type: "ack", ids }));
      this.stats.acksSent += ids.length;
    }
  }

  // ending and reconnecting

  async _ended(conn, { code = null, reason = "", hintMs = null }) {
    if (conn !== this._conn || conn.done) return;
    conn.done = true;
    clearTimeout(conn.connectTimer);
    this._discard(conn);
    this._conn = null;
    if (this.state === "closed") return;
    this.stats.lastCloseCode = code;
    if (conn.openedAt !== null) {
      const parsed = conn.kind === "ws" ? parseJson(reason) : null; // 4000-4099: {reason, reconnect_after_ms}
      if (parsed && code >= 4000 && code < 4100) {
        hintMs = parsed.reconnect_after_ms ?? null;
        reason = parsed.reason ?? reason;
      }
      const floorMs = conn.kind === "sse" && hintMs == null && code == null ? this.options.sseRetryMs : null;
      const outcome = { opened: true, code, hintMs, floorMs, upMs: Date.now() - conn.openedAt };
      this._decide(outcome, { transport: conn.kind, code, reason });
      return;
    }
    if (conn.kind === "ws" && this.options.transport === "auto") {
      // The WebSocket never opened (a proxy that blocks it, say): use SSE from now on.
      this._wsBlocked = true;
      this.stats.fallbacks += 1;
      this._openEventSource();
      return;
    }
    this.state = "waiting";
    const { status, retryAfterMs } = await this._probe();
    if (this.state === "closed") return;
    this._decide({ opened: false, status, retryAfterMs }, { transport: conn.kind, status });
  }

  _decide(outcome, about) {
    let decision = this._policy.decide(outcome);
    if (!this.options.reconnect && decision.stop === undefined) decision = { stop: null };
    if (decision.stop !== undefined) {
      this._stop(decision.stop);
      return;
    }
    this._retry(decision, about);
  }

  _retry(decision, about) {
    this.state = "waiting";
    this.transport = null;
    this.stats.reconnects += 1;
    this.stats.lastDelayMs = decision.delayMs;
    this.dispatchEvent(new CustomEvent("reconnecting", { detail: { delayMs: decision.delayMs, why: decision.why, ...about } }));
    this._timer = setTimeout(() => {
      this._timer = null;
      if (this.state === "waiting") this._connect(Boolean(decision.refreshToken));
    }, decision.delayMs);
  }

  /** Why an attempt failed: browsers hide a refused handshake's status from WebSocket and
   * EventSource, so ask the edge once with fetch (its error answers allow any origin): a 401
   * (token refused), a 503 or 429 with Retry-After (shed), or null (network, or anything else).
   * A token it accepts opens a stream, which is dropped at once. */
  async _probe() {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), this.options.connectTimeoutMs);
    try {
      const response = await fetch(this._url("/sse", "http"), { signal: controller.signal, cache: "no-store" });
      return { status: response.status, retryAfterMs: parseRetryAfter(response.headers.get("retry-after")) };
    } catch {
      return { status: null, retryAfterMs: null };
    } finally {
      clearTimeout(timer);
      controller.abort();
    }
  }

  _stop(error) {
    const conn = this._conn;
    this._conn = null;
    if (conn) {
      conn.done = true;
      clearTimeout(conn.connectTimer);
      this._discard(conn);
    }
    clearTimeout(this._timer);
    clearTimeout(this._ackTimer);
    this._ackTimer = null;
    this.state = "closed";
    this.transport = null;
    this.error = error;
    this.dispatchEvent(new CustomEvent("close", { detail: { error } }));
  }

  _discard(conn) {
    const socket = conn.socket;
    if (!socket) return;
    socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
    if (conn.kind === "ws") {
      if (socket.readyState <= 1) socket.close(1000);
    } else {
      socket.close();
    }
  }
}

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}
