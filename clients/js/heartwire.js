// heartwire.js: the JavaScript client of heartwire (protocol v1 over WebSocket).
//
// One ES module, no dependencies, no build step: browsers and Node >= 18.19 (Node 20 needs
// `--experimental-websocket` for its global WebSocket; Node 18 has none: pass one, such as
// the `ws` package's, as `options.WebSocket`). It mirrors the Rust client (src/client, docs/client.md) so that both
// behave the same when connections die and servers restart:
//
// - Dead servers are noticed from the heartwire heartbeat, not from TCP: every frame proves
//   the server alive, and `(max_missed + 1) × interval_ms` of silence (from `welcome`) ends
//   the connection. The check is one timer re-armed to a deadline computed from timestamps,
//   never a count of ticks, because timers fire late in background tabs and busy processes.
// - Reconnects use exponential backoff with full jitter (a uniform draw below a capped
//   exponential ceiling), with a server's `bye.reconnect_ms` as a floor, so clients cut at
//   once do not come back at once.
// - Everything that must outlive a connection lives in the client object, not the
//   connection: each room's last delivered seq and epoch (class Rooms), the frames waiting
//   for an answer (class Outgoing) and the backoff. A connection is a disposable record;
//   callbacks of an old socket are detached when it is dropped.
// - Rooms are resumed with `subscribe{since, epoch}`: every room message is delivered once
//   and in seq order, and a hole is reported as a `gap` event before anything after it.
//   After a server restart (a new epoch), what the new epoch already holds is fetched with
//   `subscribe{since: 0, epoch}` and delivered in order before later live messages.
// - Publishes carry ids and are resent after a reconnect until acknowledged; the server
//   dedupes them, so each is delivered once. Direct sends and requests are never resent.
// - Every buffer is bounded: the queue of frames waiting for an answer (`maxPending`), the
//   frames of it on the wire (`maxInFlight`), the socket's outbound buffer
//   (`outboundBudget`); the fetch hold lasts one round trip.

/** The protocol's limits on names and ids, in UTF-8 bytes. */
const MAX_ROOM = 256;
const MAX_USER = 128;
const MAX_ID = 128;
/** The frame limit assumed until `welcome` announces the server's. */
const DEFAULT_MAX_FRAME = 65536;
/** A silence timer that fires this much later than due means the event loop was stalled. */
const STALL_MS = 50;
/** How long `close()` waits for the server's close frame. */
const CLOSE_WAIT_MS = 2000;
/** WebSocket readyState values (not every implementation exposes them as statics). */
const OPEN = 1;

const encoder = new TextEncoder();
const now = () => performance.now();

/** @param {string} s @param {number} max */
function utf8Within(s, max) {
  return s.length * 3 <= max || encoder.encode(s).length <= max;
}

/** @param {unknown} s @param {number} max */
function validName(s, max) {
  return typeof s === 'string' && s.length > 0 && utf8Within(s, max);
}

/**
 * An error of a client call. `code` says what the application may conclude:
 * `queue_full` (nothing was queued), `timeout`, `connection_lost` (a send or request was
 * written but the connection died before its answer: it may or may not have been
 * processed), `closed`, `too_large`, `duplicate_id`, `invalid`, `offline` (`ping` needs a
 * connection), or, with `server: true`, the code of the server's `error` frame
 * (`forbidden`, `bad_request`, `unknown_type`, ...).
 */
export class HeartwireError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {boolean} [server] the server refused the frame (`error` frame)
   */
  constructor(code, message, server = false) {
    super(message);
    this.name = 'HeartwireError';
    /** @type {string} */
    this.code = code;
    /** @type {boolean} */
    this.server = server;
  }
}

/**
 * Reconnect delays: capped exponential ceilings with full jitter. Attempt k waits a uniform
 * random time in `[0, min(cap, initial × factor^k)]`; the randomness is applied after the
 * cap, so clients failing for a long time stay spread over `[0, cap]`. A connection that
 * stayed up `resetAfter` starts the schedule over; a server's `reconnect_ms` is a floor.
 */
export class Backoff {
  /**
   * @param {{initial?: number, factor?: number, cap?: number, resetAfter?: number}} [config]
   *   milliseconds (defaults 250, ×2, 30000, 10000)
   * @param {() => number} [random] uniform in [0, 1)
   */
  constructor(config = {}, random = Math.random) {
    this.initial = config.initial ?? 250;
    this.factor = Math.max(1, config.factor ?? 2);
    this.cap = Math.max(this.initial, config.cap ?? 30000);
    this.resetAfter = config.resetAfter ?? 10000;
    this.random = random;
    /** Attempts since the last reset. */
    this.attempt = 0;
  }

  /** The ceiling of attempt number `attempt` (0-based). @param {number} attempt */
  ceiling(attempt) {
    const grown = this.initial * this.factor ** Math.min(attempt, 1024);
    return Number.isFinite(grown) ? Math.min(this.cap, grown) : this.cap;
  }

  /** The next delay in ms, at least `floor` when given. @param {number} [floor] */
  next(floor) {
    const delay = this.random() * this.ceiling(this.attempt);
    this.attempt += 1;
    return Math.max(Math.round(delay), floor ?? 0);
  }

  /** A connection that stayed up `uptime` ms has ended. @param {number} uptime */
  connectionEnded(uptime) {
    if (uptime >= this.resetAfter) this.attempt = 0;
  }
}

/**
 * Subscriptions and their position in each room's stream; the rules of src/client/rooms.rs.
 * A message at or below the last delivered seq is a duplicate and dropped. A hole, a
 * `subscribed` with `recovered: false` or another epoch is a gap, reported before anything
 * after it. After an epoch change the room's messages are held until the fetch of the new
 * epoch (`subscribe{since: 0, epoch}`) is answered, then released in seq order. Plain data,
 * no I/O: methods return the events to emit as `[type, detail]` pairs.
 * @private
 */
class Rooms {
  constructor() {
    /** @type {Map<string, {lastSeq: number|null, epoch: string|null, gapReported: boolean, pending: boolean, fetch: {id: number, held: Map<number, object>}|null}>} */
    this.rooms = new Map();
    this.fetches = 0;
  }

  add(room) {
    if (this.rooms.has(room)) return false;
    this.rooms.set(room, { lastSeq: null, epoch: null, gapReported: false, pending: false, fetch: null });
    return true;
  }

  remove(room) {
    return this.rooms.delete(room);
  }

  /** The `since`/`epoch` of a (re)subscription, marking it pending. */
  subscribeArgs(room) {
    const pos = this.rooms.get(room);
    if (!pos) return null;
    pos.pending = true;
    pos.gapReported = false;
    return { since: pos.lastSeq, epoch: pos.epoch };
  }

  /** Nothing is pending any more; a fetch is dropped (the resubscription asks again). */
  connectionLost() {
    for (const pos of this.rooms.values()) {
      pos.pending = false;
      pos.fetch = null;
    }
  }

  static gap(room, last, previousEpoch, epoch, resumeSeq) {
    return ['gap', {
      room, lastSeen: last, previousEpoch, epoch, resumeSeq,
      epochChanged: previousEpoch !== epoch,
    }];
  }

  /** Delivers held messages in seq order, once each, every hole before what follows it. */
  static release(room, pos, held, events) {
    for (const seq of [...held.keys()].sort((a, b) => a - b)) {
      const last = pos.lastSeq ?? 0;
      if (seq <= last) continue;
      if (seq > last + 1) events.push(Rooms.gap(room, last, pos.epoch, pos.epoch, seq));
      pos.lastSeq = seq;
      events.push(['message', held.get(seq)]);
    }
  }

  /** @returns {{held: boolean, events: Array<[string, object]>}} */
  onMessage(m) {
    if (typeof m.room !== 'string' || typeof m.seq !== 'number') {
      return { held: false, events: [['message', m]] };
    }
    const pos = this.rooms.get(m.room);
    if (!pos || (pos.lastSeq !== null && m.seq <= pos.lastSeq)) return { held: false, events: [] };
    if (pos.fetch) {
      // A live message overtaking the fetch's replay, or the replay itself.
      if (!pos.fetch.held.has(m.seq)) pos.fetch.held.set(m.seq, m);
      return { held: true, events: [] };
    }
    const events = [];
    if (pos.lastSeq !== null && m.seq > pos.lastSeq + 1 && !pos.gapReported) {
      events.push(Rooms.gap(m.room, pos.lastSeq, pos.epoch, pos.epoch, m.seq));
      // One report per (re)subscription; a live hole is reported each time.
      pos.gapReported = pos.pending;
    }
    pos.lastSeq = m.seq;
    events.push(['message', m]);
    return { held: false, events };
  }

  /** @returns {{events: Array<[string, object]>, fetch: number|null}} */
  onSubscribed(s) {
    const pos = this.rooms.get(s.room);
    if (!pos) return { events: [], fetch: null };
    pos.pending = false;
    const events = [];
    const epochChanged = pos.epoch !== null && pos.epoch !== s.epoch;
    const subscribed = (recovered) => ['subscribed', { room: s.room, seq: s.seq, epoch: s.epoch, recovered }];
    if (pos.fetch) {
      const fetch = pos.fetch;
      pos.fetch = null;
      if (!epochChanged) {
        // The fetch is answered: everything up to s.seq that the epoch retains was replayed
        // before this frame; what it no longer holds is a gap.
        Rooms.release(s.room, pos, fetch.held, events);
        const last = pos.lastSeq ?? 0;
        if (s.seq > last) {
          events.push(Rooms.gap(s.room, last, pos.epoch, pos.epoch, s.seq + 1));
          pos.lastSeq = s.seq;
        }
        pos.gapReported = false;
        // The resubscription that started the fetch lost the old epoch. Live messages held
        // past the replay were delivered before it.
        events.push(['subscribed', { room: s.room, seq: Math.max(s.seq, pos.lastSeq ?? 0), epoch: s.epoch, recovered: false }]);
        return { events, fetch: null };
      }
      // The stream restarted again before the fetch was answered: what was held belongs to
      // the abandoned epoch, and the gap reported below covers it.
    }
    const recovered = s.recovered === undefined ? null : s.recovered;
    if (pos.lastSeq !== null && epochChanged) {
      if (!pos.gapReported) events.push(Rooms.gap(s.room, pos.lastSeq, pos.epoch, s.epoch, 1));
      pos.epoch = s.epoch;
      pos.lastSeq = 0;
      pos.gapReported = false;
      if (s.seq > 0) {
        // `subscribed` is reported when the fetch is answered, after its messages.
        this.fetches += 1;
        pos.fetch = { id: this.fetches, held: new Map() };
        return { events, fetch: this.fetches };
      }
    } else if (pos.lastSeq !== null) {
      if (recovered === false && !pos.gapReported && s.seq > pos.lastSeq) {
        events.push(Rooms.gap(s.room, pos.lastSeq, pos.epoch, pos.epoch, s.seq + 1));
      }
      pos.lastSeq = Math.max(pos.lastSeq, s.seq);
    } else {
      pos.lastSeq = s.seq;
    }
    pos.epoch = s.epoch;
    pos.gapReported = false;
    events.push(subscribed(recovered));
    return { events, fetch: null };
  }

  fetchPending(room, id) {
    return this.rooms.get(room)?.fetch?.id === id;
  }

  /** The fetch got no answer in time: stop holding, deliver what is held in seq order. */
  fetchTimedOut(room, id) {
    const events = [];
    const pos = this.rooms.get(room);
    if (!pos || pos.fetch?.id !== id) return events;
    pos.pending = false;
    const { held } = pos.fetch;
    pos.fetch = null;
    Rooms.release(room, pos, held, events);
    return events;
  }
}

/**
 * Frames waiting for an answer (the rules of src/client/outgoing.rs): bounded by count,
 * written in order, at most `window` on the wire. On a lost connection publishes are kept
 * (resent: the server dedupes them by id) while written sends and requests fail with
 * `connection_lost` (not deduped: a resend could deliver twice).
 * @private
 */
class Outgoing {
  constructor(capacity, window) {
    this.capacity = Math.max(1, capacity);
    this.window = Math.max(1, window);
    /** In queue order. @type {Map<string, {id: string, kind: string, text: string, written: boolean, resolve: Function, reject: Function, timer?: any, notBefore?: number, retries?: number}>} */
    this.entries = new Map();
    this.inFlight = 0;
  }

  push(entry) {
    if (this.entries.has(entry.id)) throw new HeartwireError('duplicate_id', `id ${entry.id} is already waiting for an answer`);
    if (this.entries.size >= this.capacity) {
      throw new HeartwireError('queue_full', `${this.capacity} frames are already waiting for an answer`);
    }
    this.entries.set(entry.id, entry);
  }

  take(id) {
    const entry = this.entries.get(id);
    if (!entry) return null;
    this.entries.delete(id);
    if (entry.written) this.inFlight -= 1;
    clearTimeout(entry.timer);
    return entry;
  }

  /** Writes what fits in the window, in order; `write` returns false to stop. */
  pump(write) {
    const t = now();
    for (const entry of this.entries.values()) {
      if (this.inFlight >= this.window) return;
      if (entry.written || (entry.notBefore !== undefined && entry.notBefore > t)) continue;
      if (!write(entry.text)) return;
      entry.written = true;
      this.inFlight += 1;
    }
  }

  /** Puts a written entry back in the queue, to be written again after `delay` ms. */
  retryLater(entry, delay) {
    if (entry.written) this.inFlight -= 1;
    entry.written = false;
    entry.notBefore = now() + delay;
  }

  connectionLost() {
    for (const entry of [...this.entries.values()]) {
      if (entry.written && entry.kind !== 'publish') {
        this.take(entry.id);
        entry.reject(new HeartwireError('connection_lost', `the connection was lost before the answer to ${entry.id}`));
      }
      entry.written = false;
    }
    this.inFlight = 0;
  }

  failAll(error) {
    for (const entry of this.entries.values()) {
      clearTimeout(entry.timer);
      entry.reject(error);
    }
    this.entries.clear();
    this.inFlight = 0;
  }
}

/**
 * @typedef {object} HeartwireOptions
 * @property {string} [user] `hello.user` (required unless the server authenticates tokens)
 * @property {string | (() => string | Promise<string>)} [token] `hello.token` (a JWT whose
 *   subject becomes the user); a function is called before every connection attempt, so
 *   that a reconnect an hour later presents a fresh token
 * @property {string} [client] `hello.client`, free text
 * @property {number} [heartbeat] ping interval in ms to ask the server for
 *   (`hello.heartbeat.interval_ms`); it grants the nearest it allows, and the dead-server
 *   check uses what `welcome` says
 * @property {typeof WebSocket} [WebSocket] the WebSocket constructor (default:
 *   `globalThis.WebSocket`)
 * @property {number} [dialTimeout] ms for the WebSocket to open (default 5000)
 * @property {number} [handshakeTimeout] ms from open to `welcome` (default 10000)
 * @property {number} [requestTimeout] default ms of `request`/`presence`/`ping`, and of
 *   the fetch of a new epoch's history (default 10000)
 * @property {{initial?: number, factor?: number, cap?: number, resetAfter?: number}} [backoff]
 *   reconnect schedule in ms (default 250, ×2, 30000, reset after 10000 of uptime)
 * @property {number} [maxPending] frames waiting for an answer (default 1024); one more
 *   fails with `queue_full`
 * @property {number} [maxInFlight] of those, on the wire at once (default 64)
 * @property {number} [outboundBudget] bytes the socket may buffer beyond the in-flight
 *   window before the server counts as not reading (default 262144)
 */

/**
 * A heartwire client over WebSocket. It connects at once and keeps connecting until
 * `close()`; calls made while offline are queued. Events (an `EventTarget`; each event is a
 * `CustomEvent` whose `detail` is described here, or use `on(type, fn)`):
 *
 * - `connected` `{session, user, reconnects, heartbeat, maxFrame}`: the handshake completed
 *   (`reconnects` = connections before this one).
 * - `message` the wire frame `{type: "message", room, seq, from, data, id}`; each room
 *   message once and in seq order; direct messages have no `room` or `seq`.
 * - `subscribed` `{room, seq, epoch, recovered}`: the server confirmed a (re)subscription,
 *   after what it replayed (or the client fetched); `recovered` is `true` when everything
 *   missed was replayed, `false` when not (a `gap` came first), `null` on a first one.
 * - `gap` `{room, lastSeen, previousEpoch, epoch, resumeSeq, epochChanged}`: messages were
 *   missed and cannot be replayed, reported before anything after the hole. In the same
 *   epoch the missing seqs are `lastSeen + 1 .. resumeSeq - 1`; with `epochChanged` (a
 *   server restart) everything after `lastSeen` of the old epoch is lost and the new epoch
 *   is delivered from `resumeSeq` (1; a second gap follows if its history no longer starts
 *   there).
 * - `unsubscribed` `{room}`, `join` / `leave` `{room, user}` (presence events),
 *   `frame` (any other server frame not answering a request: the frame).
 * - `disconnected` `{reason, ...}`: a connection ended or an attempt failed. `reason`:
 *   `server_silent` (`silentMs`), `bye` (`bye`: the server's reason, `reconnectMs`),
 *   `socket_closed` (`code`, `closeReason`), `connect_failed` (`message`),
 *   `handshake_timeout`, `outbound_full`, `unauthorized` (`message`; the client then
 *   closes: retrying cannot help), `closed` (`close()` was called).
 * - `reconnecting` `{inMs, attempt}`: the next attempt comes after `inMs`.
 * - `error` `{code, message, id}`: a server `error` frame not answering a pending call.
 * - `rtt` `{ms}`: a `ping()` was answered.
 * - `closed`: the client stopped for good; no more events follow.
 */
/**
 * A `CustomEvent` where there is one (browsers, Node >= 19); Node 18 has `Event` only, so
 * there the same `detail` rides on a subclass.
 */
/** Listens and does nothing. */
const ignore = () => {};

const DetailEvent = typeof CustomEvent === 'function'
  ? class extends CustomEvent { constructor(type, detail) { super(type, { detail }); } }
  : class extends Event { constructor(type, detail) { super(type); this.detail = detail; } };

export class Heartwire extends EventTarget {
  /**
   * @param {string | URL} url the server's WebSocket endpoint, e.g. `ws://host:port/ws`
   * @param {HeartwireOptions} [options]
   */
  constructor(url, options = {}) {
    super();
    const WS = options.WebSocket ?? globalThis.WebSocket;
    if (typeof WS !== 'function') {
      throw new Error('no WebSocket: Node 20 needs --experimental-websocket (Node >= 22 and browsers have it); on Node 18 pass {WebSocket} (the ws package)');
    }
    const parsed = new URL(url);
    if (parsed.protocol !== 'ws:' && parsed.protocol !== 'wss:') {
      throw new Error(`not a WebSocket URL: ${url}`);
    }
    /** The server's WebSocket endpoint. @type {string} */
    this.url = parsed.href;
    this._WS = WS;
    const defaults = {
      dialTimeout: 5000, handshakeTimeout: 10000, requestTimeout: 10000,
      maxPending: 1024, maxInFlight: 64, outboundBudget: 256 * 1024,
    };
    this._opts = { ...options };
    for (const [key, value] of Object.entries(defaults)) this._opts[key] = options[key] ?? value;
    const { user, token, heartbeat } = this._opts;
    if (user === undefined && token === undefined) throw new Error('a user or a token is required');
    if (user !== undefined && !validName(user, MAX_USER)) throw new Error(`user must be 1 to ${MAX_USER} bytes`);
    if (token !== undefined && typeof token !== 'string' && typeof token !== 'function') {
      throw new Error('token must be a string or a function returning one');
    }
    if (heartbeat !== undefined && !(Number.isInteger(heartbeat) && heartbeat >= 0)) {
      throw new Error('heartbeat must be a whole number of milliseconds');
    }
    this._backoff = new Backoff(this._opts.backoff);
    this._rooms = new Rooms();
    this._outgoing = new Outgoing(this._opts.maxPending, this._opts.maxInFlight);
    this._pings = new Map();
    this._pingSeq = 0;
    this._nextId = 0;
    const bytes = new Uint8Array(6);
    if (globalThis.crypto?.getRandomValues) globalThis.crypto.getRandomValues(bytes);
    else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
    // Random per client: the server dedupes publishes by user, room and id.
    this._idPrefix = [...bytes].map((b) => b.toString(16).padStart(2, '0')).join('');
    this._serverMaxFrame = DEFAULT_MAX_FRAME;
    this._conn = null;
    this._connections = 0;
    this._reconnectTimer = null;
    /** Timers of publishes the server could not take yet (`unavailable`). */
    this._retryTimers = new Set();
    this._state = 'connecting';
    this._closed = false;
    this._rtt = null;
    this._dial();
  }

  /** `connecting`, `connected`, `waiting` (between attempts) or `closed`. @type {string} */
  get state() { return this._state; }

  /** The last round trip measured by `ping()`, in ms; `null` before the first. */
  get rtt() { return this._rtt; }

  /**
   * Adds a listener that receives the event's `detail`; returns a function removing it.
   * @param {string} type
   * @param {(detail: any) => void} listener
   * @returns {() => void}
   */
  on(type, listener) {
    const wrapped = (e) => listener(e.detail);
    this.addEventListener(type, wrapped);
    return () => this.removeEventListener(type, wrapped);
  }

  /**
   * Joins a room now, or as soon as connected; later reconnects resume it from the last
   * delivered seq. The server's answer comes as a `subscribed` event.
   * @param {string} room 1 to 256 bytes
   * @returns {boolean} false if already subscribed
   */
  subscribe(room) {
    this._checkOpen();
    if (!validName(room, MAX_ROOM)) throw new HeartwireError('invalid', `room must be 1 to ${MAX_ROOM} bytes`);
    if (!this._rooms.add(room)) return false;
    if (this._ready()) this._sendSubscribe(room);
    return true;
  }

  /**
   * Leaves a room and forgets its position.
   * @param {string} room
   * @returns {boolean} false if not subscribed
   */
  unsubscribe(room) {
    this._checkOpen();
    if (!this._rooms.remove(room)) return false;
    if (this._ready()) this._write(JSON.stringify({ type: 'unsubscribe', room }));
    return true;
  }

  /**
   * Publishes `data` to `room`. Resolves once the server sequenced it, however long the
   * client is offline: unacknowledged publishes are resent after every reconnect with their
   * id, and the server delivers each id once.
   * @param {string} room
   * @param {unknown} data any JSON value
   * @param {{id?: string}} [options] `id` for the ack and dedupe (generated when absent)
   * @returns {Promise<{id: string, seq: number}>}
   */
  publish(room, data, options = {}) {
    if (!validName(room, MAX_ROOM)) return this._invalid(`room must be 1 to ${MAX_ROOM} bytes`);
    if (data === undefined) return this._invalid('data is required');
    return this._queue('publish', options.id, (id) => ({ type: 'publish', room, data, id }), null);
  }

  /**
   * Sends `data` to every live session of user `to`. Not resent after a reconnect once
   * written (the server does not dedupe sends): it then fails with `connection_lost`.
   * @param {string} to
   * @param {unknown} data
   * @param {{id?: string}} [options]
   * @returns {Promise<{id: string, delivered: number}>} `delivered`: sessions reached
   */
  send(to, data, options = {}) {
    if (!validName(to, MAX_USER)) return this._invalid(`user must be 1 to ${MAX_USER} bytes`);
    if (data === undefined) return this._invalid('data is required');
    return this._queue('send', options.id, (id) => ({ type: 'send', to, data, id }), null);
  }

  /**
   * Sends any frame (an object with a string `type`) with an `id` and resolves with the
   * first server frame carrying that id (other than the echo of a publish): an `ack`, a
   * `presence` answer, an application frame. An `error` frame rejects with its code. A
   * request not answered within the timeout rejects with `timeout` and is not sent late.
   * @param {{type: string, id?: string, [field: string]: unknown}} frame
   * @param {{timeout?: number}} [options] ms (default `requestTimeout`)
   * @returns {Promise<object>}
   */
  request(frame, options = {}) {
    if (frame === null || typeof frame !== 'object' || typeof frame.type !== 'string') {
      return this._invalid('a request needs a string `type`');
    }
    if (frame.id !== undefined && typeof frame.id !== 'string') return this._invalid('`id` must be a string');
    const timeout = options.timeout ?? this._opts.requestTimeout;
    return this._queue('request', frame.id, (id) => ({ ...frame, id }), timeout);
  }

  /**
   * The users present in `room` (subscribed with at least one session), sorted.
   * @param {string} room
   * @param {{timeout?: number}} [options]
   * @returns {Promise<string[]>}
   */
  async presence(room, options = {}) {
    const answer = await this.request({ type: 'presence', room }, options);
    return Array.isArray(answer.users) ? answer.users : [];
  }

  /**
   * Measures the round trip to the server with a `ping{seq}`; also updates `rtt` and emits
   * an `rtt` event. Needs a connection (`offline` otherwise).
   * @param {{timeout?: number}} [options]
   * @returns {Promise<number>} milliseconds
   */
  ping(options = {}) {
    if (this._closed) return Promise.reject(new HeartwireError('closed', 'the client is closed'));
    if (!this._ready()) return Promise.reject(new HeartwireError('offline', 'not connected'));
    const seq = ++this._pingSeq;
    const timeout = options.timeout ?? this._opts.requestTimeout;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pings.delete(seq);
        reject(new HeartwireError('timeout', `no pong within ${timeout} ms`));
      }, timeout);
      this._pings.set(seq, { sent: now(), resolve, reject, timer });
      this._write(JSON.stringify({ type: 'ping', seq }));
    });
  }

  /**
   * A snapshot of the client's state.
   * @returns {{state: string, connected: boolean, session: string|null, rooms: Array<{room: string, seq: number|null, epoch: string|null}>, pending: number, inFlight: number, connections: number, attempt: number, heartbeat: {interval_ms: number, max_missed: number}|null, silenceLimitMs: number|null, rtt: number|null}}
   */
  status() {
    const conn = this._ready() ? this._conn : null;
    return {
      state: this._state,
      connected: conn !== null,
      session: conn?.session ?? null,
      rooms: [...this._rooms.rooms].map(([room, pos]) => ({ room, seq: pos.lastSeq, epoch: pos.epoch })),
      pending: this._outgoing.entries.size,
      inFlight: this._outgoing.inFlight,
      connections: this._connections,
      attempt: this._backoff.attempt,
      heartbeat: conn?.heartbeat ?? null,
      silenceLimitMs: conn?.silenceLimit ?? null,
      rtt: this._rtt,
    };
  }

  /**
   * Says `bye`, closes the connection and stops reconnecting. Waiting calls fail with
   * `closed`; a `closed` event is the last one. Resolves when the socket is closed (or
   * after 2 s).
   * @returns {Promise<void>}
   */
  close() {
    if (this._closed) return Promise.resolve();
    clearTimeout(this._reconnectTimer);
    const conn = this._conn;
    this._conn = null;
    let socketClosed = Promise.resolve();
    if (conn) {
      const ws = conn.ws;
      this._dispose(conn);
      if (ws && ws.readyState <= OPEN) {
        socketClosed = new Promise((resolve) => {
          const timer = setTimeout(resolve, CLOSE_WAIT_MS);
          ws.onclose = () => { clearTimeout(timer); resolve(); };
        });
        try {
          if (ws.readyState === OPEN) ws.send('{"type":"bye"}');
          ws.close(1000, 'normal');
        } catch { /* already closing */ }
      }
      this._rooms.connectionLost();
      this._emit('disconnected', { reason: 'closed' });
    }
    this._shutDown();
    return socketClosed;
  }

  // ----- internals -----

  _emit(type, detail) {
    if (this._ended) return; // `closed` is the last event
    this.dispatchEvent(new DetailEvent(type, detail));
  }

  _checkOpen() {
    if (this._closed) throw new HeartwireError('closed', 'the client is closed');
  }

  _invalid(message) {
    return Promise.reject(new HeartwireError('invalid', message));
  }

  _ready() {
    return this._conn?.phase === 'ready';
  }

  _queue(kind, id, build, timeout) {
    if (this._closed) return Promise.reject(new HeartwireError('closed', 'the client is closed'));
    if (id === undefined) id = `${this._idPrefix}-${++this._nextId}`;
    else if (!validName(id, MAX_ID)) return this._invalid(`id must be 1 to ${MAX_ID} bytes`);
    let text;
    try {
      text = JSON.stringify(build(id));
    } catch (e) {
      return this._invalid(`not JSON: ${e.message}`);
    }
    if (!utf8Within(text, this._serverMaxFrame)) {
      return Promise.reject(new HeartwireError('too_large', `the frame is larger than the server's max_frame (${this._serverMaxFrame} bytes)`));
    }
    return new Promise((resolve, reject) => {
      const entry = { id, kind, text, written: false, resolve, reject };
      this._outgoing.push(entry);
      if (timeout !== null) {
        entry.timer = setTimeout(() => {
          if (this._outgoing.take(id)) {
            reject(new HeartwireError('timeout', `no answer to ${id} within ${timeout} ms`));
            this._pump();
          }
        }, timeout);
      }
      this._pump();
    });
  }

  _pump() {
    if (this._ready()) this._outgoing.pump((text) => this._write(text));
  }

  /** Writes one frame; false when the connection refuses it (gone, or not reading). */
  _write(text) {
    const conn = this._conn;
    if (!conn?.ws || conn.ws.readyState !== OPEN) return false;
    try {
      conn.ws.send(text);
    } catch {
      return false;
    }
    // The window bounds what waits for answers; beyond that the server is not reading.
    const budget = this._opts.outboundBudget + this._opts.maxInFlight * (this._serverMaxFrame + 1);
    if (conn.ws.bufferedAmount > budget) {
      queueMicrotask(() => { if (this._conn === conn) this._lost({ reason: 'outbound_full' }); });
      return false;
    }
    return true;
  }

  _sendSubscribe(room) {
    const args = this._rooms.subscribeArgs(room);
    if (!args) return;
    const frame = { type: 'subscribe', room };
    if (args.since !== null) frame.since = args.since;
    if (args.epoch !== null) frame.epoch = args.epoch;
    this._write(JSON.stringify(frame));
  }

  // ----- connection lifecycle -----

  _dial() {
    if (this._closed || this._conn) return;
    this._state = 'connecting';
    const conn = { ws: null, phase: 'dialing', timers: new Set() };
    this._conn = conn;
    this._later(conn, this._opts.dialTimeout, () => {
      if (conn.phase === 'dialing') {
        this._lost({ reason: 'connect_failed', message: `no connection within ${this._opts.dialTimeout} ms` });
      }
    });
    const { token } = this._opts;
    if (typeof token !== 'function') {
      this._open(conn, token);
      return;
    }
    Promise.resolve().then(token).then(
      (fresh) => { if (this._conn === conn) this._open(conn, fresh); },
      (e) => { if (this._conn === conn) this._lost({ reason: 'connect_failed', message: `token: ${e?.message ?? e}` }); },
    );
  }

  /** Opens the WebSocket of `conn`; `hello` carries `token`. */
  _open(conn, token) {
    const { user, client, heartbeat } = this._opts;
    const hello = JSON.stringify({
      type: 'hello', user, token, client: client ?? 'heartwire.js',
      heartbeat: heartbeat === undefined ? undefined : { interval_ms: heartbeat },
    });
    try {
      conn.ws = new this._WS(this.url);
    } catch (e) {
      this._lost({ reason: 'connect_failed', message: String(e?.message ?? e) });
      return;
    }
    const ws = conn.ws;
    ws.onopen = () => {
      conn.phase = 'handshaking';
      conn.lastRx = now();
      ws.send(hello);
      this._later(conn, this._opts.handshakeTimeout, () => {
        if (conn.phase === 'handshaking') this._lost({ reason: 'handshake_timeout' });
      });
    };
    ws.onmessage = (e) => this._onFrame(conn, e.data);
    ws.onclose = (e) => {
      if (conn.phase === 'dialing') {
        this._lost({ reason: 'connect_failed', message: `WebSocket closed (${e.code})` });
      } else {
        this._lost({ reason: 'socket_closed', code: e.code, closeReason: e.reason });
      }
    };
    // Browsers follow an `error` with a `close` (code 1006); Node 20's WebSocket fires only
    // the `error` when a connection is refused.
    ws.onerror = (e) => {
      const message = String(e?.message ?? e?.error?.message ?? 'WebSocket error');
      if (conn.phase === 'dialing') this._lost({ reason: 'connect_failed', message });
      else this._lost({ reason: 'socket_closed', code: 1006, closeReason: message });
    };
  }

  /** A timer that dies with its connection. */
  _later(conn, ms, fn) {
    const timer = setTimeout(() => {
      conn.timers.delete(timer);
      if (this._conn === conn) fn();
    }, ms);
    conn.timers.add(timer);
    return timer;
  }

  /** Detaches a connection's socket callbacks and cancels its timers. */
  _dispose(conn) {
    for (const timer of conn.timers) clearTimeout(timer);
    conn.timers.clear();
    const ws = conn.ws;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      // Closing a socket that is still connecting reports an error; with no listener the
      // `ws` package (Node 18's WebSocket here) throws it instead of dropping it.
      ws.onerror = ignore;
    }
  }

  /** The connection (or the attempt) is over: settle the state and schedule the next one. */
  _lost(detail) {
    const conn = this._conn;
    if (!conn) return;
    this._conn = null;
    this._dispose(conn);
    const ws = conn.ws;
    if (ws && ws.readyState <= OPEN) {
      try { ws.close(1000, 'normal'); } catch { /* already closing */ }
    }
    if (conn.readyAt !== undefined) this._backoff.connectionEnded(now() - conn.readyAt);
    this._rooms.connectionLost();
    this._outgoing.connectionLost();
    for (const ping of this._pings.values()) {
      clearTimeout(ping.timer);
      ping.reject(new HeartwireError('connection_lost', 'the connection was lost before the pong'));
    }
    this._pings.clear();
    this._emit('disconnected', detail);
    if (detail.reason === 'unauthorized') {
      this._shutDown();
      return;
    }
    if (this._closed) return;
    const delay = this._backoff.next(detail.reconnectMs);
    this._state = 'waiting';
    this._emit('reconnecting', { inMs: delay, attempt: this._backoff.attempt });
    this._reconnectTimer = setTimeout(() => this._dial(), delay);
  }

  _shutDown() {
    if (this._closed) return;
    this._closed = true;
    this._state = 'closed';
    clearTimeout(this._reconnectTimer);
    for (const timer of this._retryTimers) clearTimeout(timer);
    this._retryTimers.clear();
    const closed = new HeartwireError('closed', 'the client is closed');
    this._outgoing.failAll(closed);
    for (const ping of this._pings.values()) {
      clearTimeout(ping.timer);
      ping.reject(closed);
    }
    this._pings.clear();
    this._emit('closed', null);
    this._ended = true;
  }

  _onWelcome(conn, w) {
    const hb = w.heartbeat;
    const interval = Number(hb?.interval_ms) || 0;
    conn.phase = 'ready';
    conn.readyAt = now();
    conn.session = w.session;
    conn.heartbeat = hb ?? null;
    conn.silenceLimit = interval > 0 ? interval * ((Number(hb.max_missed) || 0) + 1) : null;
    if (Number.isInteger(w.max_frame) && w.max_frame > 0) this._serverMaxFrame = w.max_frame;
    this._connections += 1;
    this._state = 'connected';
    this._emit('connected', {
      session: w.session, user: w.user, reconnects: this._connections - 1,
      heartbeat: conn.heartbeat, maxFrame: this._serverMaxFrame,
    });
    if (this._conn !== conn) return; // a listener closed the client
    for (const room of [...this._rooms.rooms.keys()]) this._sendSubscribe(room);
    this._pump();
    if (conn.silenceLimit !== null) this._watchSilence(conn);
  }

  /**
   * Arms one timer for the moment the server would have been silent too long. A timer that
   * fires late means this event loop was stalled, and frames may sit unread in the socket:
   * they are given one short turn to be read before the server is declared dead.
   */
  _watchSilence(conn) {
    if (this._conn !== conn) return;
    const t = now();
    const late = conn.silenceDue === undefined ? 0 : t - conn.silenceDue;
    const deadline = conn.lastRx + conn.silenceLimit;
    let wait;
    if (t < deadline) {
      wait = deadline - t;
    } else if (late > STALL_MS && !conn.rechecked) {
      conn.rechecked = true;
      wait = STALL_MS;
    } else {
      this._lost({ reason: 'server_silent', silentMs: Math.round(t - conn.lastRx) });
      return;
    }
    conn.silenceDue = t + wait;
    clearTimeout(conn.silenceTimer);
    conn.timers.delete(conn.silenceTimer);
    conn.silenceTimer = this._later(conn, wait, () => this._watchSilence(conn));
  }

  _onFrame(conn, data) {
    if (this._conn !== conn) return;
    conn.lastRx = now();
    conn.rechecked = false;
    if (typeof data !== 'string') return; // the server sends text only
    let f;
    try {
      f = JSON.parse(data);
    } catch {
      return;
    }
    if (f === null || typeof f !== 'object' || typeof f.type !== 'string') return;
    switch (f.type) {
      case 'welcome':
        if (conn.phase === 'handshaking') this._onWelcome(conn, f);
        return;
      case 'ping':
        this._write(JSON.stringify({ type: 'pong', seq: f.seq }));
        return;
      case 'pong': {
        const ping = this._pings.get(f.seq);
        if (!ping) return;
        this._pings.delete(f.seq);
        clearTimeout(ping.timer);
        this._rtt = now() - ping.sent;
        this._emit('rtt', { ms: this._rtt });
        ping.resolve(this._rtt);
        return;
      }
      case 'message': {
        for (const [type, detail] of this._rooms.onMessage(f).events) this._emit(type, detail);
        return;
      }
      case 'subscribed': {
        const { events, fetch } = this._rooms.onSubscribed(f);
        for (const [type, detail] of events) this._emit(type, detail);
        if (fetch !== null && this._conn === conn) this._fetch(conn, f.room, fetch);
        return;
      }
      case 'unsubscribed':
        if (f.reason === 'resync') {
          // The server dropped the subscription rather than deliver a hole: resume from the
          // position; `subscribed.recovered` (and a gap, if any) says what was lost.
          if (this._rooms.rooms.has(f.room) && this._ready()) this._sendSubscribe(f.room);
        } else {
          this._emit('unsubscribed', { room: f.room });
        }
        return;
      case 'ack':
        this._answer(f);
        return;
      case 'error':
        this._onError(conn, f);
        return;
      case 'bye': {
        const detail = conn.rejected !== undefined
          ? { reason: 'unauthorized', message: conn.rejected }
          : { reason: 'bye', bye: f.reason ?? 'normal', reconnectMs: f.reconnect_ms };
        this._lost(detail);
        return;
      }
      default:
        if (typeof f.id === 'string' && this._answer(f)) return;
        if (f.type === 'join' || f.type === 'leave') this._emit(f.type, { room: f.room, user: f.user });
        else this._emit('frame', f);
    }
  }

  /** Resolves the pending call with the frame's id; false if none waits. */
  _answer(f) {
    const entry = this._outgoing.take(f.id);
    if (!entry) return false;
    if (entry.kind === 'publish' && f.type === 'ack') entry.resolve({ id: f.id, seq: f.seq });
    else if (entry.kind === 'send' && f.type === 'ack') entry.resolve({ id: f.id, delivered: f.delivered });
    else entry.resolve(f);
    this._pump();
    return true;
  }

  _onError(conn, f) {
    if (f.code === 'unauthorized' && conn.phase === 'handshaking') {
      conn.rejected = f.message ?? 'unauthorized';
      return;
    }
    const entry = typeof f.id === 'string' ? this._outgoing.entries.get(f.id) : undefined;
    if (!entry) {
      this._emit('error', { code: f.code, message: f.message, id: f.id });
      return;
    }
    if (f.code === 'unavailable' && entry.kind === 'publish') {
      // Nothing was sequenced: the same frame (same id) may be sent again, after a delay.
      entry.retries = (entry.retries ?? 0) + 1;
      const delay = Math.round(Math.random() * this._backoff.ceiling(entry.retries - 1));
      this._outgoing.retryLater(entry, delay);
      // Not tied to this connection: a reconnect before the delay must not strand the entry.
      // The timer clears the entry's wait itself: timers and performance.now() do not tick
      // together, and a timer a fraction of a millisecond early must not leave it unsent.
      const timer = setTimeout(() => {
        this._retryTimers.delete(timer);
        delete entry.notBefore;
        this._pump();
      }, delay);
      this._retryTimers.add(timer);
      this._pump();
      return;
    }
    this._outgoing.take(f.id);
    entry.reject(new HeartwireError(f.code, f.message ?? f.code, true));
    this._pump();
  }

  /**
   * Fetches what a room's new epoch retains (`subscribe{since: 0, epoch}`), and stops
   * holding the room's messages if no answer comes within `requestTimeout` (the server may
   * have dropped the `subscribe`).
   */
  _fetch(conn, room, fetch) {
    this._sendSubscribe(room);
    this._later(conn, this._opts.requestTimeout, () => {
      if (!this._rooms.fetchPending(room, fetch)) return;
      for (const [type, detail] of this._rooms.fetchTimedOut(room, fetch)) this._emit(type, detail);
    });
  }
}
