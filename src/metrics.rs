//! Prometheus metrics of one server, every name prefixed `heartwire_`.
//!
//! **Why `prometheus-client` and one registry per server.** A test binary (and an application
//! that embeds heartwire) runs several servers in one process. The `metrics` facade records
//! into one process-wide recorder that can be installed once, so two servers would either
//! share counters or fight over the recorder; thread-local recorders do not fit either, since
//! a server's sessions run on several worker threads. `prometheus-client` has no global state:
//! each server owns a [`Metrics`] value (a registry and its metric handles, shared by `Arc`)
//! and `/metrics` encodes exactly that server's registry. Its histograms are fixed bucket
//! arrays, so memory stays bounded when nobody scrapes, and nothing needs a background upkeep
//! task.
//!
//! **Cost on the hot path.** Label lookups (`Family::get_or_create`, a lock and a hash) happen
//! once, here, when the server starts: every per-frame counter is resolved into a plain
//! handle, and counting a frame is one relaxed atomic add. Outbound frames are counted by each
//! connection's writer task per written batch (a local tally, then one add per frame type
//! present), not per fan-out push. Values that the registry already knows exactly
//! (connections, users, rooms, history sizes) are not counted at all: they are read from the
//! registry and the broker when `/metrics` is scraped ([`ServerHandle::render_metrics`]).
//!
//! The text is OpenMetrics 1.0 (Prometheus' own scrape format, a superset of its classic text
//! format): counters are exposed with a `_total` suffix and the body ends with `# EOF`.
//!
//! [`ServerHandle::render_metrics`]: crate::ServerHandle::render_metrics

use std::fmt;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry as PromRegistry;

use crate::protocol::{ByeReason, Inbound, ParseError};

/// The content type of [`Metrics::encode`]'s output.
#[cfg(feature = "http")]
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Defines a label enum: its variants index the pre-resolved counter handles, its names are
/// the label values, so a label can be neither misspelled nor forgotten.
macro_rules! label_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $label:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub(crate) enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            const ALL: &'static [$name] = &[$($name::$variant,)+];

            fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }
        }

        impl From<$name> for usize {
            fn from(label: $name) -> usize {
                label as usize
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
                fmt::Write::write_str(encoder, self.as_str())
            }
        }
    };
}

label_enum!(
    /// `type` of inbound frames. `App` is a frame for an application handler (or for none: the
    /// label set must stay bounded whatever clients send), `Invalid` a line that was not a
    /// valid frame.
    InType {
        Hello = "hello",
        Ping = "ping",
        Pong = "pong",
        Subscribe = "subscribe",
        Unsubscribe = "unsubscribe",
        Publish = "publish",
        Send = "send",
        Bye = "bye",
        Presence = "presence",
        App = "app",
        Invalid = "invalid",
    }
);

label_enum!(
    /// `type` of outbound frames; `App` is anything else (application frames).
    OutType {
        Welcome = "welcome",
        Ping = "ping",
        Pong = "pong",
        Subscribed = "subscribed",
        Unsubscribed = "unsubscribed",
        Message = "message",
        Ack = "ack",
        Error = "error",
        Bye = "bye",
        Presence = "presence",
        Join = "join",
        Leave = "leave",
        App = "app",
    }
);

label_enum!(
    /// `reason` of closed connections: the `bye` reasons, and `connection_lost` for a socket
    /// that failed before any close began.
    CloseReason {
        Normal = "normal",
        HeartbeatTimeout = "heartbeat_timeout",
        HandshakeTimeout = "handshake_timeout",
        Shutdown = "shutdown",
        SlowConsumer = "slow_consumer",
        FrameTooLarge = "frame_too_large",
        ProtocolError = "protocol_error",
        Unauthorized = "unauthorized",
        Kicked = "kicked",
        MaxAge = "max_age",
        ServerFull = "server_full",
        TooManyConnections = "too_many_connections",
        RateLimited = "rate_limited",
        ConnectionLost = "connection_lost",
    }
);

impl From<Option<ByeReason>> for CloseReason {
    fn from(reason: Option<ByeReason>) -> Self {
        match reason {
            None => CloseReason::ConnectionLost,
            Some(ByeReason::Normal) => CloseReason::Normal,
            Some(ByeReason::HeartbeatTimeout) => CloseReason::HeartbeatTimeout,
            Some(ByeReason::HandshakeTimeout) => CloseReason::HandshakeTimeout,
            Some(ByeReason::Shutdown) => CloseReason::Shutdown,
            Some(ByeReason::SlowConsumer) => CloseReason::SlowConsumer,
            Some(ByeReason::FrameTooLarge) => CloseReason::FrameTooLarge,
            Some(ByeReason::ProtocolError) => CloseReason::ProtocolError,
            Some(ByeReason::Unauthorized) => CloseReason::Unauthorized,
            Some(ByeReason::Kicked) => CloseReason::Kicked,
            Some(ByeReason::MaxAge) => CloseReason::MaxAge,
            Some(ByeReason::ServerFull) => CloseReason::ServerFull,
            Some(ByeReason::TooManyConnections) => CloseReason::TooManyConnections,
            Some(ByeReason::RateLimited) => CloseReason::RateLimited,
        }
    }
}

label_enum!(
    /// `limit` of [`Metrics::limit_hit`]: the configuration key of the limit.
    Limit {
        MaxConnections = "max_connections",
        MaxConnectionsPerIp = "max_connections_per_ip",
        AcceptRate = "accept_rate",
        MaxSessionsPerUser = "max_sessions_per_user",
        MaxRoomsPerSession = "max_rooms_per_session",
        MessageRate = "message_rate",
    }
);

label_enum!(
    /// `hook` of the hook metrics: which application hook was called.
    HookName {
        Connect = "connect",
        Subscribe = "subscribe",
        Publish = "publish",
        Send = "send",
    }
);

label_enum!(
    /// `outcome` of a hook call: what the hook decided, or how it failed to (the configured
    /// `hooks.on_failure` answer then applied).
    HookOutcome {
        Accept = "accept",
        Reject = "reject",
        Replace = "replace",
        Timeout = "timeout",
        Error = "error",
    }
);

#[cfg(feature = "redis")]
label_enum!(
    /// `op` of [`Metrics::store_error`]: what the node asked the shared store.
    StoreOp {
        Connect = "connect",
        Publish = "publish",
        History = "history",
        Subscribe = "subscribe",
        Presence = "presence",
        Sessions = "sessions",
        ToUser = "to_user",
        ToNode = "to_node",
        Ping = "ping",
    }
);

/// One label: its key and a label enum's value.
type Label<L> = [(&'static str, L); 1];

/// Counters of one labelled family, resolved once and indexed by the label enum.
struct Handles(Vec<Counter>);

impl Handles {
    fn get<L: Copy + Into<usize>>(&self, label: L) -> &Counter {
        &self.0[label.into()]
    }
}

/// What the Redis broker counts.
#[cfg(feature = "redis")]
struct StoreMetrics {
    errors: Handles,
    pubsub_reconnects: Counter,
    probe_failures: Counter,
    events_dropped: Counter,
}

#[cfg(feature = "redis")]
impl StoreMetrics {
    fn register(r: &mut PromRegistry) -> Self {
        StoreMetrics {
            errors: family(
                r,
                "store_errors",
                "Calls to the shared store (broker.url) that failed or timed out, by operation",
                "op",
                StoreOp::ALL,
            ),
            pubsub_reconnects: counter(
                r,
                "pubsub_reconnects",
                "Times the node's subscription connection to the shared store was lost and made again",
            ),
            probe_failures: counter(
                r,
                "pubsub_probe_failures",
                "Probes of an idle subscription connection that did not come back (the connection was restarted)",
            ),
            events_dropped: counter(
                r,
                "broker_events_dropped",
                "Events from the shared store dropped because the registry was behind (its rooms were then checked for holes)",
            ),
        }
    }
}

/// The metrics of one server. Cheap to share: clone the `Arc` it lives in.
pub struct Metrics {
    registry: PromRegistry,
    accepts: Counter,
    accept_errors: Counter,
    closes: Handles,
    slow_consumer_closes: Counter,
    frames_in: Handles,
    frames_out: Handles,
    bytes_in: Counter,
    bytes_out: Counter,
    rtt: Histogram,
    misses: Counter,
    sweep_sessions: Counter,
    sweep_rooms: Counter,
    registry_restarts: Counter,
    session_panics: Counter,
    room_fills: Counter,
    room_resyncs: Counter,
    #[cfg(feature = "redis")]
    store: StoreMetrics,
    limits: Handles,
    /// Indexed by `hook × HookOutcome::ALL.len() + outcome`.
    hook_calls: Vec<Counter>,
    /// Indexed by hook.
    hook_seconds: Vec<Histogram>,
    connections: Gauge,
    identified: Gauge,
    users: Gauge,
    rooms: Gauge,
    draining: Gauge,
    store_up: Gauge,
    history_rooms: Gauge,
    history_messages: Gauge,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("accepts", &self.accepts.get())
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers a family and resolves one handle per label value, in the enum's order.
fn family<L>(
    registry: &mut PromRegistry,
    name: &str,
    help: &str,
    key: &'static str,
    values: &[L],
) -> Handles
where
    L: EncodeLabelValue
        + Clone
        + fmt::Debug
        + PartialEq
        + Eq
        + std::hash::Hash
        + Send
        + Sync
        + 'static,
{
    let family = Family::<Label<L>, Counter>::default();
    registry.register(name, help, family.clone());
    Handles(
        values
            .iter()
            .map(|v| family.get_or_create(&[(key, v.clone())]).clone())
            .collect(),
    )
}

/// The hook families: calls by hook and outcome, and time to the answer by hook.
fn hook_families(registry: &mut PromRegistry) -> (Vec<Counter>, Vec<Histogram>) {
    let calls = Family::<(Label<HookName>, Label<HookOutcome>), Counter>::default();
    registry.register(
        "hook_calls",
        "Application hook calls, by hook and outcome (timeout and error: hooks.on_failure applied)",
        calls.clone(),
    );
    let calls = HookName::ALL
        .iter()
        .flat_map(|h| HookOutcome::ALL.iter().map(move |o| (*h, *o)))
        .map(|(h, o)| {
            calls
                .get_or_create(&([("hook", h)], [("outcome", o)]))
                .clone()
        })
        .collect();
    fn buckets() -> Histogram {
        Histogram::new(exponential_buckets(0.0001, 2.0, 16))
    }
    let seconds =
        Family::<Label<HookName>, Histogram, fn() -> Histogram>::new_with_constructor(buckets);
    registry.register(
        "hook_duration_seconds",
        "Time from a hook call to its answer or failure, by hook",
        seconds.clone(),
    );
    let seconds = HookName::ALL
        .iter()
        .map(|h| seconds.get_or_create(&[("hook", *h)]).clone())
        .collect();
    (calls, seconds)
}

fn counter(registry: &mut PromRegistry, name: &str, help: &str) -> Counter {
    let c = Counter::default();
    registry.register(name, help, c.clone());
    c
}

fn gauge(registry: &mut PromRegistry, name: &str, help: &str) -> Gauge {
    let g = Gauge::default();
    registry.register(name, help, g.clone());
    g
}

impl Metrics {
    /// A fresh set of metrics with its own registry.
    pub(crate) fn new() -> Self {
        let mut r = PromRegistry::with_prefix("heartwire");
        let accepts = counter(&mut r, "accepts", "TCP connections accepted");
        let accept_errors = counter(&mut r, "accept_errors", "Failed accept calls");
        let closes = family(
            &mut r,
            "closes",
            "Connections closed, by reason (the bye reason, or connection_lost)",
            "reason",
            CloseReason::ALL,
        );
        let slow_consumer_closes = counter(
            &mut r,
            "slow_consumer_closes",
            "Connections cut off because their outbound queue reached its byte budget",
        );
        let frames_in = family(
            &mut r,
            "frames_in",
            "Frames received, by type",
            "type",
            InType::ALL,
        );
        let frames_out = family(
            &mut r,
            "frames_out",
            "Frames written to sockets, by type",
            "type",
            OutType::ALL,
        );
        let bytes_in = counter(&mut r, "bytes_in", "Bytes of frames received");
        let bytes_out = counter(&mut r, "bytes_out", "Bytes written to sockets");
        let rtt = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        r.register(
            "heartbeat_rtt_seconds",
            "Round trip of answered heartbeat pings",
            rtt.clone(),
        );
        let misses = counter(
            &mut r,
            "heartbeat_misses",
            "Heartbeat ticks that found the previous ping unanswered",
        );
        let sweep_sessions = counter(
            &mut r,
            "sweep_removed_sessions",
            "Sessions the registry sweep removed because their actor died without unregistering",
        );
        let sweep_rooms = counter(
            &mut r,
            "sweep_removed_rooms",
            "Empty rooms the registry sweep removed",
        );
        let registry_restarts = counter(
            &mut r,
            "registry_restarts",
            "Times the registry crashed (a panic in a handler) and a fresh one took over",
        );
        let session_panics = counter(
            &mut r,
            "session_panics",
            "Sessions that ended by a panic in one of their handlers",
        );
        let room_fills = counter(
            &mut r,
            "room_fills",
            "Holes in a room's stream that this node read back from history",
        );
        let room_resyncs = counter(
            &mut r,
            "room_resyncs",
            "Rooms whose subscribers were told to resync (a hole history could not fill)",
        );
        #[cfg(feature = "redis")]
        let store = StoreMetrics::register(&mut r);
        let limits = family(
            &mut r,
            "limit_hits",
            "Times a configured limit refused or delayed something, by limit (its config key)",
            "limit",
            Limit::ALL,
        );
        let (hook_calls, hook_seconds) = hook_families(&mut r);
        let connections = gauge(&mut r, "connections", "Open connections (sessions)");
        let identified = gauge(
            &mut r,
            "identified_connections",
            "Connections that completed the handshake",
        );
        let users = gauge(&mut r, "users", "Distinct users connected");
        let rooms = gauge(&mut r, "rooms", "Rooms with at least one subscriber");
        let draining = gauge(&mut r, "draining", "1 while the server is shutting down");
        let store_up = gauge(
            &mut r,
            "store_up",
            "1 while the shared store is reachable and the node receives from it (always 1 in memory)",
        );
        let history_rooms = gauge(
            &mut r,
            "history_rooms",
            "Rooms the broker keeps a stream of",
        );
        let history_messages = gauge(
            &mut r,
            "history_messages",
            "Messages kept in room histories, all rooms together",
        );
        Metrics {
            registry: r,
            accepts,
            accept_errors,
            closes,
            slow_consumer_closes,
            frames_in,
            frames_out,
            bytes_in,
            bytes_out,
            rtt,
            misses,
            sweep_sessions,
            sweep_rooms,
            registry_restarts,
            session_panics,
            room_fills,
            room_resyncs,
            #[cfg(feature = "redis")]
            store,
            limits,
            hook_calls,
            hook_seconds,
            connections,
            identified,
            users,
            rooms,
            draining,
            store_up,
            history_rooms,
            history_messages,
        }
    }

    /// Encodes every metric in the OpenMetrics text format ([`CONTENT_TYPE`]).
    pub(crate) fn encode(&self) -> String {
        let mut text = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }

    /// A connection was accepted.
    pub(crate) fn accepted(&self) {
        self.accepts.inc();
    }

    /// An accept call failed.
    pub(crate) fn accept_failed(&self) {
        self.accept_errors.inc();
    }

    /// A connection ended; `reason` is the reason its close began with (`None`: the socket
    /// failed first).
    pub(crate) fn closed(&self, reason: Option<ByeReason>) {
        self.closes.get(CloseReason::from(reason)).inc();
        if reason == Some(ByeReason::SlowConsumer) {
            self.slow_consumer_closes.inc();
        }
    }

    /// A limit triggered.
    pub(crate) fn limit_hit(&self, limit: Limit) {
        self.limits.get(limit).inc();
    }

    /// A hook call ended with `outcome` after `elapsed`.
    pub(crate) fn hook_call(&self, hook: HookName, outcome: HookOutcome, elapsed: Duration) {
        let at = usize::from(hook) * HookOutcome::ALL.len() + usize::from(outcome);
        self.hook_calls[at].inc();
        self.hook_seconds[usize::from(hook)].observe(elapsed.as_secs_f64());
    }

    /// A line arrived and was parsed into `frame`.
    pub(crate) fn frame_in(&self, frame: &Result<Inbound<'_>, ParseError>, len: usize) {
        let label = match frame {
            Ok(Inbound::Hello(_)) => InType::Hello,
            Ok(Inbound::Ping(_)) => InType::Ping,
            Ok(Inbound::Pong(_)) => InType::Pong,
            Ok(Inbound::Subscribe(_)) => InType::Subscribe,
            Ok(Inbound::Unsubscribe(_)) => InType::Unsubscribe,
            Ok(Inbound::Publish(_)) => InType::Publish,
            Ok(Inbound::Send(_)) => InType::Send,
            Ok(Inbound::Bye(_)) => InType::Bye,
            Ok(Inbound::Other { kind, .. }) if kind == "presence" => InType::Presence,
            Ok(Inbound::Other { .. }) => InType::App,
            Err(_) => InType::Invalid,
        };
        self.frames_in.get(label).inc();
        // The newline is part of what came over the wire.
        self.bytes_in.inc_by(len as u64 + 1);
    }

    /// Frames were written to a socket (each whole, newline included).
    pub(crate) fn frames_written<'a>(&self, frames: impl IntoIterator<Item = &'a [u8]>) {
        let mut tally = [0u64; OutType::ALL.len()];
        let mut bytes = 0;
        for frame in frames {
            tally[usize::from(out_type(frame))] += 1;
            bytes += frame.len() as u64;
        }
        for (counter, n) in self.frames_out.0.iter().zip(tally) {
            if n > 0 {
                counter.inc_by(n);
            }
        }
        self.bytes_out.inc_by(bytes);
    }

    /// A ping was answered after `rtt`.
    pub(crate) fn heartbeat_rtt(&self, rtt: Duration) {
        self.rtt.observe(rtt.as_secs_f64());
    }

    /// A heartbeat tick found the previous ping unanswered.
    pub(crate) fn heartbeat_missed(&self) {
        self.misses.inc();
    }

    /// The registry sweep removed dead sessions and empty rooms.
    pub(crate) fn swept(&self, sessions: usize, rooms: usize) {
        self.sweep_sessions.inc_by(sessions as u64);
        self.sweep_rooms.inc_by(rooms as u64);
    }

    /// The registry crashed and was replaced.
    pub(crate) fn registry_restarted(&self) {
        self.registry_restarts.inc();
    }

    /// A hole in a room's stream was read back from history.
    pub(crate) fn room_filled(&self) {
        self.room_fills.inc();
    }

    /// A room's subscribers were told to resync.
    pub(crate) fn room_resynced(&self) {
        self.room_resyncs.inc();
    }

    /// A call to the shared store failed.
    #[cfg(feature = "redis")]
    pub(crate) fn store_error(&self, op: StoreOp) {
        self.store.errors.get(op).inc();
    }

    /// The subscription connection to the shared store was lost.
    #[cfg(feature = "redis")]
    pub(crate) fn pubsub_reconnected(&self) {
        self.store.pubsub_reconnects.inc();
    }

    /// A probe of the subscription connection did not come back.
    #[cfg(feature = "redis")]
    pub(crate) fn probe_failed(&self) {
        self.store.probe_failures.inc();
    }

    /// Inbound events were dropped because the registry was behind.
    #[cfg(feature = "redis")]
    pub(crate) fn events_dropped(&self, n: u64) {
        self.store.events_dropped.inc_by(n);
    }

    /// A session ended by a panic.
    pub(crate) fn session_panicked(&self) {
        self.session_panics.inc();
    }

    /// Sets the values read from the registry and the broker at scrape time.
    pub(crate) fn set_levels(&self, levels: &Levels) {
        let g = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        self.connections.set(g(levels.connections));
        self.identified.set(g(levels.identified));
        self.users.set(g(levels.users));
        self.rooms.set(g(levels.rooms));
        self.draining.set(i64::from(levels.draining));
        self.store_up.set(i64::from(levels.store_up));
        if let Some((rooms, messages)) = levels.history {
            self.history_rooms.set(g(rooms));
            self.history_messages.set(g(messages));
        }
    }
}

/// Current levels, read at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Levels {
    /// Open connections.
    pub connections: usize,
    /// Connections past the handshake.
    pub identified: usize,
    /// Distinct users.
    pub users: usize,
    /// Rooms with subscribers.
    pub rooms: usize,
    /// Shutting down.
    pub draining: bool,
    /// The shared store is reachable and the node receives from it.
    pub store_up: bool,
    /// Rooms and messages the broker keeps, when it can tell.
    pub history: Option<(usize, usize)>,
}

/// The label of an encoded outbound frame. Frames the server encodes start with
/// `{"type":"NAME"` (the tag is serialised first), so a prefix comparison is enough.
fn out_type(frame: &[u8]) -> OutType {
    const HEAD: &[u8] = b"{\"type\":\"";
    let Some(rest) = frame.strip_prefix(HEAD) else {
        return OutType::App;
    };
    let Some(end) = rest.iter().take(16).position(|b| *b == b'"') else {
        return OutType::App;
    };
    let name = &rest[..end];
    OutType::ALL
        .iter()
        .copied()
        .find(|t| *t != OutType::App && t.as_str().as_bytes() == name)
        .unwrap_or(OutType::App)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_outbound_frames_by_prefix() {
        assert_eq!(
            out_type(b"{\"type\":\"message\",\"room\":1}\n"),
            OutType::Message
        );
        assert_eq!(out_type(b"{\"type\":\"bye\"}\n"), OutType::Bye);
        assert_eq!(out_type(b"{\"type\":\"whoami\"}\n"), OutType::App);
        assert_eq!(out_type(b"{\"id\":1,\"type\":\"ping\"}\n"), OutType::App);
        assert_eq!(out_type(b""), OutType::App);
    }

    fn text_has(m: &Metrics, needle: &str) -> bool {
        m.encode().contains(needle)
    }

    #[test]
    fn encodes_with_prefix_and_counts() {
        let m = Metrics::new();
        m.accepted();
        m.frames_written([
            &b"{\"type\":\"ping\",\"seq\":1}\n"[..],
            &b"{\"type\":\"ping\",\"seq\":2}\n"[..],
        ]);
        m.closed(Some(ByeReason::SlowConsumer));
        m.closed(None);
        assert!(text_has(
            &m,
            "heartwire_closes_total{reason=\"connection_lost\"} 1\n"
        ));
        let text = m.encode();
        assert!(text.contains("heartwire_accepts_total 1\n"), "{text}");
        assert!(
            text.contains("heartwire_frames_out_total{type=\"ping\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("heartwire_closes_total{reason=\"slow_consumer\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("heartwire_slow_consumer_closes_total 1\n"));
        m.hook_call(
            HookName::Publish,
            HookOutcome::Timeout,
            Duration::from_millis(3),
        );
        let text = m.encode();
        assert!(
            text.contains("heartwire_hook_calls_total{hook=\"publish\",outcome=\"timeout\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("heartwire_hook_calls_total{hook=\"send\",outcome=\"accept\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("heartwire_hook_duration_seconds_count{hook=\"publish\"} 1\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("heartwire_"), "{line}");
        }
    }
}
