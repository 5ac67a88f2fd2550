//! The Redis bridge: carries group messages between engine processes
//! (prefork workers, machines) through Redis PUBLISH/SUBSCRIBE, keeps a
//! cluster-wide presence count per group, and runs plain commands (the
//! session store's GET / SET .. EX / DEL).
//!
//! IO-thread only: [`Bridge::start`] spawns its tasks with
//! `tokio::task::spawn_local`, so it must be called inside the engine's
//! `LocalSet` (tokio current-thread runtime); all methods are called there too.
//!
//! # Connections
//! One PubSub connection carries SUBSCRIBE/UNSUBSCRIBE and the incoming
//! messages; one multiplexed connection carries everything else (PUBLISH,
//! presence, [`Bridge::command`]). When either fails, both are dropped,
//! [`BridgeEvent::Disconnected`] is reported and the bridge reconnects with a
//! backoff of 50 ms doubling to 2 s, for ever. On success the current
//! subscriptions and this node's presence are re-established *before*
//! [`BridgeEvent::Reconnected`] is reported, so a publish made after that event
//! reaches the other nodes.
//!
//! # Wire format (shared by every node of a cluster)
//! - Channel of a group: `prefix + "g:" + group`. The message is an envelope:
//!   the 4 bytes `PGB1`, the node id's length as a big-endian u32, the node id,
//!   then the payload (opaque here). Messages without that envelope are
//!   ignored; a node drops its own echoes by comparing node ids.
//! - Presence: hash `prefix + "p:" + group`, field = node id, value = that
//!   node's member count. Liveness key `prefix + "n:" + node` (value `1`)
//!   expires after 15 s and is refreshed every 5 s; a node whose key is gone
//!   does not count (and its hash fields are removed by the next reader).

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{ConnectionLike, MultiplexedConnection, PubSubSink, PubSubStream};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// A parsed `redis://` or `rediss://` URL (see [`parse_url`]).
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// Host name or IP address (an IPv6 address without its brackets).
    pub host: String,
    /// TCP port (6379 unless given).
    pub port: u16,
    /// `rediss://`: TLS, verifying the server's certificate and host name.
    pub tls: bool,
    /// ACL user name (`redis://user:password@host`), if any.
    pub username: Option<String>,
    /// Password (`AUTH`), if any.
    pub password: Option<String>,
    /// Database number (`SELECT`), 0 unless given.
    pub db: i64,
    /// `?ca=/path/ca.pem`: trust only the certificates in this PEM file
    /// instead of the system's roots (a private CA or a self-signed server).
    pub tls_ca: Option<PathBuf>,
}

impl RedisUrl {
    /// The URL without its credentials, for logs and banners.
    pub fn redacted(&self) -> String {
        let auth = match (&self.username, &self.password) {
            (Some(u), _) => format!("{u}:***@"),
            (None, Some(_)) => ":***@".to_string(),
            (None, None) => String::new(),
        };
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        let scheme = if self.tls { "rediss" } else { "redis" };
        let ca = self.tls_ca.as_ref().map(|p| format!("?ca={}", p.display())).unwrap_or_default();
        format!("{scheme}://{auth}{host}:{}/{}{ca}", self.port, self.db)
    }
}

impl fmt::Debug for RedisUrl {
    // Never prints the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Parses `redis://[[user]:password@]host[:port][/db][?ca=/path/ca.pem]`
/// (also `rediss://` for TLS).
///
/// - The password (and user) are percent-decoded, so `%40`, `%3A`, `%2F`
///   stand for `@`, `:`, `/`; a `/`, `?` or `#` in a password must be encoded.
///   `redis://:secret@host` is a password alone; `redis://name@host` (a user
///   without a password) is refused, being almost always a password missing
///   its leading `:`.
/// - An IPv6 host is written in brackets: `redis://[::1]:6379`.
/// - `rediss://` verifies the server certificate against the system's roots
///   (the platform certificate store) and the host name. `?ca=/path/ca.pem`
///   trusts the certificates in that PEM file instead (the file is read here,
///   so a missing or empty file is reported at once). There is no option to
///   skip verification; URL fragments (`#insecure`) are refused.
///
/// Errors are one line, start with `redis URL: ` and never contain the password.
pub fn parse_url(url: &str) -> Result<RedisUrl, String> {
    let err = |m: String| Err(format!("redis URL: {m}"));
    let lower = url.get(..9).unwrap_or(url).to_ascii_lowercase();
    let (tls, rest) = if lower.starts_with("redis://") {
        (false, &url[8..])
    } else if lower.starts_with("rediss://") {
        (true, &url[9..])
    } else {
        let scheme = url.split("://").next().filter(|s| s.len() < url.len()).unwrap_or("");
        return if scheme.is_empty() {
            err("must start with redis:// or rediss://".into())
        } else {
            err(format!("unsupported scheme '{scheme}://' (use redis:// or rediss://)"))
        };
    };
    if rest.contains('#') {
        return err("fragments ('#...') are not supported; to trust a private CA use rediss://host/?ca=/path/ca.pem".into());
    }
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    let (mut username, mut password) = (None, None);
    if let Some(ui) = userinfo {
        match ui.split_once(':') {
            Some((u, p)) => {
                let u = percent_decode(u, "user name")?;
                let p = percent_decode(p, "password")?;
                username = Some(u).filter(|u| !u.is_empty());
                password = Some(p).filter(|p| !p.is_empty());
                if username.is_some() && password.is_none() {
                    return err("a user name needs a password (redis://user:password@host)".into());
                }
            }
            None if ui.is_empty() => {}
            None => {
                return err("'name@host' has no password; write redis://:password@host for a password alone or redis://user:password@host".into());
            }
        }
    }
    let (host, port) = split_host_port(hostport).map_err(|m| format!("redis URL: {m}"))?;
    let db = match path.trim_start_matches('/') {
        "" if path.len() <= 1 => 0,
        d if d.bytes().all(|b| b.is_ascii_digit()) && !d.is_empty() && d.len() <= 9 => d.parse::<i64>().unwrap(),
        d => return err(format!("bad database '/{d}': expected /NUMBER, e.g. /0")),
    };
    let mut tls_ca = None;
    for param in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = param.split_once('=').unwrap_or((param, ""));
        match k {
            "ca" => {
                if !tls {
                    return err("?ca= needs rediss:// (TLS)".into());
                }
                let path = percent_decode(v, "ca path")?;
                if path.is_empty() {
                    return err("?ca= needs a file path".into());
                }
                let path = PathBuf::from(path);
                read_ca(&path).map_err(|m| format!("redis URL: {m}"))?;
                tls_ca = Some(path);
            }
            other => return err(format!("unknown parameter '{other}' (known: ca)")),
        }
    }
    Ok(RedisUrl { host, port, tls, username, password, db, tls_ca })
}

fn split_host_port(hp: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(inner) = hp.strip_prefix('[') {
        let Some(end) = inner.find(']') else { return Err("unclosed '[' in the host".into()) };
        let after = &inner[end + 1..];
        let port = match after {
            "" => None,
            p if p.starts_with(':') => Some(&p[1..]),
            _ => return Err("unexpected text after ']' in the host".into()),
        };
        (&inner[..end], port)
    } else {
        match hp.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hp, None),
        }
    };
    if host.is_empty() {
        return Err("missing host".into());
    }
    if host.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b"[]@/".contains(&b)) {
        return Err(format!("bad host '{host}'"));
    }
    let port = match port {
        None => 6379,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(format!("bad port '{p}' (expected 1-65535)")),
        },
    };
    Ok((host.to_string(), port))
}

fn percent_decode(s: &str, what: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(v) => out.push(v),
                None => return Err(format!("redis URL: bad %-escape in the {what}")),
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("redis URL: the {what} is not UTF-8 after %-decoding"))
}

/// Reads a PEM file that must hold at least one certificate.
fn read_ca(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut &pem[..]).collect::<Result<Vec<_>, _>>();
    match certs {
        Ok(c) if !c.is_empty() => Ok(pem),
        Ok(_) => Err(format!("CA file {} holds no PEM certificate", path.display())),
        Err(e) => Err(format!("CA file {}: {e}", path.display())),
    }
}

/// A reply to [`Bridge::command`].
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// Nil (a missing key).
    Nil,
    /// An integer (also RESP3 booleans, as 0/1).
    Int(i64),
    /// A bulk string (also RESP3 doubles, big numbers and verbatim strings, as text).
    Data(Vec<u8>),
    /// A status such as `OK` or `PONG`. An error nested in an array (EXEC)
    /// appears as a status holding the error text.
    Status(String),
    /// An array (also RESP3 maps, flattened to key, value, ..., and sets).
    Array(Vec<Reply>),
}

impl Reply {
    fn from_value(v: redis::Value) -> Reply {
        use redis::Value as V;
        match v {
            V::Nil => Reply::Nil,
            V::Int(i) => Reply::Int(i),
            V::BulkString(b) => Reply::Data(b),
            V::SimpleString(s) => Reply::Status(s),
            V::Okay => Reply::Status("OK".into()),
            V::Array(a) | V::Set(a) => Reply::Array(a.into_iter().map(Reply::from_value).collect()),
            V::Push { data, .. } => Reply::Array(data.into_iter().map(Reply::from_value).collect()),
            V::Map(m) => Reply::Array(m.into_iter().flat_map(|(k, v)| [Reply::from_value(k), Reply::from_value(v)]).collect()),
            V::Attribute { data, .. } => Reply::from_value(*data),
            V::Double(d) => Reply::Data(d.to_string().into_bytes()),
            V::Boolean(b) => Reply::Int(b as i64),
            V::VerbatimString { text, .. } => Reply::Data(text.into_bytes()),
            V::BigNumber(n) => Reply::Data(n.to_vec()),
            V::ServerError(e) => Reply::Status(server_error_text(&e)),
            #[allow(unreachable_patterns)]
            other => Reply::Data(format!("{other:?}").into_bytes()),
        }
    }
}

fn server_error_text(e: &redis::ServerError) -> String {
    match e.details() {
        Some(d) => format!("{} {d}", e.code()),
        None => e.code().to_string(),
    }
}

/// What the bridge reports to its owner (through the `on_event` callback).
#[derive(Clone, Debug, PartialEq)]
pub enum BridgeEvent {
    /// A message another node published to `group` (own echoes are filtered out here).
    Message { group: String, from_node: String, payload: Bytes },
    /// The first connection succeeded (subscriptions and presence are in place).
    Connected,
    /// Connection lost (or, before the first connection, the first attempt
    /// failed); `error` says why. Publishes fail until Reconnected. Reported
    /// once per outage, not per retry.
    Disconnected { error: String },
    /// Back after `down_for`; `failed_publishes` were refused meanwhile
    /// (every publish that failed since the previous connection was made).
    Reconnected { down_for: Duration, failed_publishes: u64 },
}

/// Timings; tests shorten them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How often the liveness key is refreshed (and the PubSub connection pinged).
    pub liveness_every: Duration,
    /// Expiry of the liveness key: a node silent this long stops counting.
    pub liveness_ttl: Duration,
    /// Presence changes within this window are written together.
    pub presence_debounce: Duration,
    /// Bound on connecting and on each Redis reply.
    pub op_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            liveness_every: Duration::from_secs(5),
            liveness_ttl: Duration::from_secs(15),
            presence_debounce: Duration::from_millis(20),
            op_timeout: Duration::from_secs(3),
        }
    }
}

const MAGIC: &[u8; 4] = b"PGB1";

fn envelope(node: &str, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + node.len() + payload.len());
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&(node.len() as u32).to_be_bytes());
    v.extend_from_slice(node.as_bytes());
    v.extend_from_slice(payload);
    v
}

/// Splits an envelope into (node id, payload); None if it is not one.
fn open_envelope(msg: &[u8]) -> Option<(&str, &[u8])> {
    let rest = msg.strip_prefix(&MAGIC[..])?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let node = std::str::from_utf8(rest.get(4..4 + len)?).ok()?;
    Some((node, &rest[4 + len..]))
}

/// True for errors that mean the connection is gone or hung (as opposed to
/// a command Redis refused).
fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_unrecoverable_error() || e.is_connection_refusal()
}

/// State shared by the [`Bridge`] handle and its background task.
struct State {
    client: Result<redis::Client, String>,
    node: String,
    prefix: String,
    on_event: Box<dyn Fn(BridgeEvent)>,
    timing: Timing,
    /// The command connection while connected.
    cmd: RefCell<Option<MultiplexedConnection>>,
    connected: Cell<bool>,
    closed: Cell<bool>,
    /// Why the bridge is down (for the publish error text).
    last_error: RefCell<String>,
    /// Publishes failed since the last (re)connection.
    failed: Cell<u64>,
    /// Groups of interest, with their reference counts.
    wanted: RefCell<HashMap<String, u32>>,
    subs_changed: Notify,
    /// This node's member count per group (non-zero entries only).
    presence: RefCell<HashMap<String, u64>>,
    /// Presence not yet written (0 = remove this node's field).
    presence_dirty: RefCell<HashMap<String, u64>>,
    presence_changed: Notify,
    /// A command saw the connection fail: the session checks it.
    broken: Notify,
    stop: Notify,
    /// See [`Bridge::yield_when`].
    yield_hint: RefCell<Option<Rc<Cell<bool>>>>,
}

impl State {
    fn channel(&self, group: &str) -> String {
        format!("{}g:{group}", self.prefix)
    }
    fn presence_key(&self, group: &str) -> String {
        format!("{}p:{group}", self.prefix)
    }
    fn liveness_key(&self, node: &str) -> String {
        format!("{}n:{node}", self.prefix)
    }
    fn connection(&self) -> Result<MultiplexedConnection, String> {
        if self.closed.get() {
            return Err("redis unavailable: the bridge is closed".into());
        }
        match &*self.cmd.borrow() {
            Some(c) => Ok(c.clone()),
            None => Err(format!("redis unavailable: {}", self.last_error.borrow())),
        }
    }
    /// Runs `cmd` with the op timeout; a connection error wakes the session's check.
    async fn query(&self, con: &mut MultiplexedConnection, cmd: &redis::Cmd) -> Result<redis::Value, redis::RedisError> {
        let r = match tokio::time::timeout(self.timing.op_timeout, con.req_packed_command(cmd)).await {
            Ok(r) => r,
            Err(_) => Err(redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "no reply from Redis in time"))),
        };
        if let Err(e) = &r {
            if is_connection_error(e) {
                self.broken.notify_one();
            }
        }
        r
    }
}

/// The Redis bridge of one engine process (see the module docs).
pub struct Bridge {
    st: Rc<State>,
}

impl Bridge {
    /// Starts connecting (with backoff 50 ms doubling to 2 s, for ever) and
    /// returns at once. `node` identifies this process (its own messages come
    /// back from Redis and are dropped by comparing it); `prefix` starts every
    /// Redis key and channel the bridge uses (e.g. `"pagi:"`). `on_event` is
    /// called on the IO thread; it may call back into the bridge.
    /// Must be called inside a tokio `LocalSet`.
    pub fn start(url: RedisUrl, node: String, prefix: String, on_event: Box<dyn Fn(BridgeEvent)>) -> Rc<Bridge> {
        Self::start_with(url, node, prefix, on_event, Timing::default())
    }

    pub(crate) fn start_with(url: RedisUrl, node: String, prefix: String, on_event: Box<dyn Fn(BridgeEvent)>, timing: Timing) -> Rc<Bridge> {
        let st = Rc::new(State {
            client: build_client(&url),
            node,
            prefix,
            on_event,
            timing,
            cmd: RefCell::new(None),
            connected: Cell::new(false),
            closed: Cell::new(false),
            last_error: RefCell::new("not connected yet".into()),
            failed: Cell::new(0),
            wanted: RefCell::new(HashMap::new()),
            subs_changed: Notify::new(),
            presence: RefCell::new(HashMap::new()),
            presence_dirty: RefCell::new(HashMap::new()),
            presence_changed: Notify::new(),
            broken: Notify::new(),
            stop: Notify::new(),
            yield_hint: RefCell::new(None),
        });
        tokio::task::spawn_local(supervise(st.clone()));
        Rc::new(Bridge { st })
    }

    /// PUBLISH prefix+"g:"+group, an envelope carrying the node id and
    /// payload. Resolves to the number of Redis subscribers (nodes, this one
    /// included) that received it. Fails fast while disconnected, with an
    /// error starting `redis unavailable: `; every failure is counted for
    /// [`BridgeEvent::Reconnected`].
    pub async fn publish(&self, group: &str, payload: Bytes) -> Result<u64, String> {
        let st = &self.st;
        let result = match st.connection() {
            Ok(mut con) => {
                let mut cmd = redis::cmd("PUBLISH");
                cmd.arg(st.channel(group)).arg(envelope(&st.node, &payload));
                match st.query(&mut con, &cmd).await {
                    Ok(redis::Value::Int(n)) => Ok(n.max(0) as u64),
                    Ok(redis::Value::ServerError(e)) => Err(format!("redis unavailable: {}", server_error_text(&e))),
                    Ok(other) => Err(format!("redis unavailable: unexpected PUBLISH reply {other:?}")),
                    Err(e) => Err(format!("redis unavailable: {e}")),
                }
            }
            Err(e) => Err(e),
        };
        if result.is_err() {
            st.failed.set(st.failed.get() + 1);
        }
        result
    }

    /// Reference-counted interest in a group; SUBSCRIBE on the first,
    /// UNSUBSCRIBE on the last; all current subscriptions are re-established
    /// after a reconnect. Messages arrive as [`BridgeEvent::Message`].
    pub fn subscribe(&self, group: &str) {
        let mut w = self.st.wanted.borrow_mut();
        let n = w.entry(group.to_string()).or_insert(0);
        *n += 1;
        if *n == 1 {
            self.st.subs_changed.notify_one();
        }
    }

    /// Drops one reference taken by [`Bridge::subscribe`] (no-op without one).
    pub fn unsubscribe(&self, group: &str) {
        let mut w = self.st.wanted.borrow_mut();
        if let Some(n) = w.get_mut(group) {
            *n -= 1;
            if *n == 0 {
                w.remove(group);
                self.st.subs_changed.notify_one();
            }
        }
    }

    /// This node's member count for `group` (presence), written to Redis
    /// within about 20 ms (changes in that window are written together), with
    /// a node liveness key refreshed periodically so dead nodes stop counting.
    /// Kept while disconnected and rewritten on reconnection.
    pub fn set_presence(&self, group: &str, local_members: u64) {
        let st = &self.st;
        if st.closed.get() {
            return;
        }
        {
            let mut p = st.presence.borrow_mut();
            let old = if local_members == 0 { p.remove(group) } else { p.insert(group.to_string(), local_members) };
            if old.unwrap_or(0) == local_members {
                return;
            }
        }
        st.presence_dirty.borrow_mut().insert(group.to_string(), local_members);
        st.presence_changed.notify_one();
    }

    /// Cluster-wide member count of `group`: this node's count (as last set,
    /// even if not yet written) plus the counts of the other live nodes.
    pub async fn cluster_count(&self, group: &str) -> Result<u64, String> {
        let st = &self.st;
        let mut con = st.connection()?;
        let key = st.presence_key(group);
        let fields = match st.query(&mut con, redis::cmd("HGETALL").arg(&key)).await {
            Ok(v) => hash_pairs(v)?,
            Err(e) => return Err(unavailable_or_error(&e)),
        };
        let others: Vec<(String, u64)> = fields.into_iter().filter(|(n, _)| *n != st.node).collect();
        let mut sum = st.presence.borrow().get(group).copied().unwrap_or(0);
        if others.is_empty() {
            return Ok(sum);
        }
        let mut mget = redis::cmd("MGET");
        for (n, _) in &others {
            mget.arg(st.liveness_key(n));
        }
        let alive = match st.query(&mut con, &mget).await {
            Ok(redis::Value::Array(a)) => a.into_iter().map(|v| !matches!(v, redis::Value::Nil)).collect::<Vec<_>>(),
            Ok(other) => return Err(format!("redis error: unexpected MGET reply {other:?}")),
            Err(e) => return Err(unavailable_or_error(&e)),
        };
        let mut dead = redis::cmd("HDEL");
        dead.arg(&key);
        let mut any_dead = false;
        for ((n, count), live) in others.iter().zip(alive) {
            if live {
                sum += count;
            } else {
                dead.arg(n);
                any_dead = true;
            }
        }
        if any_dead {
            // Tidying only: a node that comes back rewrites its fields.
            let _ = st.query(&mut con, &dead).await;
        }
        Ok(sum)
    }

    /// Any command (for the session store: GET, SET .. EX, DEL), on the
    /// shared multiplexed connection. Errors start with `redis unavailable: `
    /// (not connected, connection lost, no reply in time) or `redis error: `
    /// (Redis refused the command). Subscribe-family commands, MONITOR,
    /// SELECT, HELLO, RESET and QUIT are refused: they would change the
    /// shared connection for everyone. Blocking commands (BLPOP ...) hold the
    /// connection and time out after 3 s: don't.
    pub async fn command(&self, args: Vec<Vec<u8>>) -> Result<Reply, String> {
        let Some(name) = args.first() else { return Err("redis error: empty command".into()) };
        let upper = String::from_utf8_lossy(name).to_ascii_uppercase();
        const REFUSED: &[&str] = &["SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE", "MONITOR", "SELECT", "HELLO", "RESET", "QUIT"];
        if REFUSED.contains(&upper.as_str()) {
            return Err(format!("redis error: {upper} is not allowed on the shared connection"));
        }
        let mut con = self.st.connection()?;
        let mut cmd = redis::Cmd::new();
        for a in &args {
            cmd.arg(&a[..]);
        }
        match self.st.query(&mut con, &cmd).await {
            Ok(redis::Value::ServerError(e)) => Err(format!("redis error: {}", server_error_text(&e))),
            Ok(v) => Ok(Reply::from_value(v)),
            Err(e) => Err(unavailable_or_error(&e)),
        }
    }

    /// Removes this node's presence and closes connections (engine
    /// shutdown). Afterwards every call fails or does nothing; no more events.
    pub async fn close(&self) {
        let st = &self.st;
        if st.closed.replace(true) {
            return;
        }
        st.connected.set(false);
        let con = st.cmd.borrow_mut().take();
        if let Some(mut con) = con {
            remove_presence(st, &mut con).await;
        }
        st.stop.notify_one();
    }

    /// A flag the owner sets while handling a [`BridgeEvent::Message`] when
    /// the message left work for other tasks (group members with a backlog
    /// to write): the bridge then clears it and yields before handling the
    /// next message, instead of handling every message already read from
    /// Redis in one go.
    pub fn yield_when(&self, flag: Rc<Cell<bool>>) {
        *self.st.yield_hint.borrow_mut() = Some(flag);
    }

    /// True while both connections are up.
    pub fn connected(&self) -> bool {
        self.st.connected.get()
    }
}

impl Drop for Bridge {
    // Without close(): the task ends, presence expires with the liveness key.
    fn drop(&mut self) {
        self.st.closed.set(true);
        self.st.stop.notify_one();
    }
}

fn unavailable_or_error(e: &redis::RedisError) -> String {
    if is_connection_error(e) {
        format!("redis unavailable: {e}")
    } else {
        format!("redis error: {e}")
    }
}

/// HGETALL's reply as (field, count) pairs; unparsable counts are skipped.
fn hash_pairs(v: redis::Value) -> Result<Vec<(String, u64)>, String> {
    let items: Vec<redis::Value> = match v {
        redis::Value::Array(a) => a,
        redis::Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        redis::Value::ServerError(e) => return Err(format!("redis error: {}", server_error_text(&e))),
        other => return Err(format!("redis error: unexpected HGETALL reply {other:?}")),
    };
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    Ok(items.chunks(2).filter_map(|kv| Some((text(kv.first()?)?, text(kv.get(1)?)?.parse().ok()?))).collect())
}

fn build_client(url: &RedisUrl) -> Result<redis::Client, String> {
    if url.tls {
        // The redis crate builds its ClientConfig from the process default
        // provider; make that ring explicitly (as the listeners use) rather
        // than rely on ring being the only provider compiled in. An error
        // means one is installed already, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let addr = if url.tls {
        redis::ConnectionAddr::TcpTls { host: url.host.clone(), port: url.port, insecure: false, tls_params: None }
    } else {
        redis::ConnectionAddr::Tcp(url.host.clone(), url.port)
    };
    let mut settings = redis::RedisConnectionInfo::default().set_db(url.db);
    if let Some(u) = &url.username {
        settings = settings.set_username(u);
    }
    if let Some(p) = &url.password {
        settings = settings.set_password(p);
    }
    let info = redis::IntoConnectionInfo::into_connection_info(addr).map_err(|e| e.to_string())?.set_redis_settings(settings);
    match &url.tls_ca {
        Some(path) => {
            let pem = read_ca(path)?;
            redis::Client::build_with_tls(info, redis::TlsCertificates { client_tls: None, root_cert: Some(pem) }).map_err(|e| e.to_string())
        }
        None => redis::Client::open(info).map_err(|e| e.to_string()),
    }
}

/// A live pair of connections.
struct Session {
    cmd: MultiplexedConnection,
    sink: PubSubSink,
    stream: PubSubStream,
    /// Groups SUBSCRIBEd on this connection.
    subscribed: HashSet<String>,
}

/// Connects, resubscribes and rewrites presence, with backoff, until closed.
async fn supervise(st: Rc<State>) {
    let client = match &st.client {
        Ok(c) => c.clone(),
        Err(e) => {
            // A configuration error no retry can fix.
            *st.last_error.borrow_mut() = e.clone();
            (st.on_event)(BridgeEvent::Disconnected { error: e.clone() });
            return;
        }
    };
    let mut backoff = st.timing.backoff_min;
    let mut down_since = Instant::now();
    let mut reported_down = false;
    let mut ever_connected = false;
    loop {
        if st.closed.get() {
            return;
        }
        let attempt = tokio::select! {
            r = connect(&st, &client) => r,
            _ = st.stop.notified() => return,
        };
        match attempt {
            Ok(session) => {
                if st.closed.get() {
                    let mut cmd = session.cmd.clone();
                    remove_presence(&st, &mut cmd).await;
                    return;
                }
                backoff = st.timing.backoff_min;
                *st.cmd.borrow_mut() = Some(session.cmd.clone());
                st.connected.set(true);
                let failed = st.failed.replace(0);
                let event = if ever_connected {
                    BridgeEvent::Reconnected { down_for: down_since.elapsed(), failed_publishes: failed }
                } else {
                    BridgeEvent::Connected
                };
                ever_connected = true;
                (st.on_event)(event);
                let why = run_session(&st, session).await;
                st.connected.set(false);
                st.cmd.borrow_mut().take();
                if st.closed.get() {
                    return;
                }
                *st.last_error.borrow_mut() = why.clone();
                down_since = Instant::now();
                reported_down = true;
                (st.on_event)(BridgeEvent::Disconnected { error: why });
            }
            Err(e) => {
                *st.last_error.borrow_mut() = e.clone();
                if !reported_down {
                    reported_down = true;
                    down_since = Instant::now();
                    (st.on_event)(BridgeEvent::Disconnected { error: e });
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = st.stop.notified() => return,
        }
        backoff = (backoff * 2).min(st.timing.backoff_max);
    }
}

async fn timed<T>(st: &State, what: &str, f: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, String> {
    match tokio::time::timeout(st.timing.op_timeout, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer from Redis within {:?}", st.timing.op_timeout)),
    }
}

async fn connect(st: &State, client: &redis::Client) -> Result<Session, String> {
    let config = redis::AsyncConnectionConfig::new().set_connection_timeout(Some(st.timing.op_timeout)).set_response_timeout(Some(st.timing.op_timeout));
    let mut cmd = timed(st, "connecting", client.get_multiplexed_async_connection_with_config(&config)).await?;
    let pubsub = timed(st, "connecting (pubsub)", client.get_async_pubsub()).await?;
    let (mut sink, stream) = pubsub.split();
    let groups: Vec<String> = st.wanted.borrow().keys().cloned().collect();
    if !groups.is_empty() {
        let channels: Vec<String> = groups.iter().map(|g| st.channel(g)).collect();
        timed(st, "SUBSCRIBE", sink.subscribe(channels)).await?;
    }
    // Redis may have lost everything (a restart without persistence): write
    // the liveness key and all of this node's presence again.
    let mut pipe = redis::pipe();
    pipe.add_command(liveness_set(st)).ignore();
    {
        let presence = st.presence.borrow();
        let mut dirty = st.presence_dirty.borrow_mut();
        for (g, n) in presence.iter() {
            pipe.cmd("HSET").arg(st.presence_key(g)).arg(&st.node).arg(*n).ignore();
        }
        for (g, _) in dirty.drain().filter(|(_, n)| *n == 0) {
            pipe.cmd("HDEL").arg(st.presence_key(&g)).arg(&st.node).ignore();
        }
    }
    timed(st, "writing presence", pipe.query_async::<()>(&mut cmd)).await.inspect_err(|_| {
        mark_all_dirty(st);
    })?;
    Ok(Session { cmd, sink, stream, subscribed: groups.into_iter().collect() })
}

/// SET .. EX of this node's liveness key.
fn liveness_set(st: &State) -> redis::Cmd {
    let mut c = redis::cmd("SET");
    c.arg(st.liveness_key(&st.node)).arg(1).arg("EX").arg(st.timing.liveness_ttl.as_secs().max(1));
    c
}

fn mark_all_dirty(st: &State) {
    let presence = st.presence.borrow();
    let mut dirty = st.presence_dirty.borrow_mut();
    for (g, n) in presence.iter() {
        dirty.insert(g.clone(), *n);
    }
}

async fn remove_presence(st: &State, con: &mut MultiplexedConnection) {
    let mut groups: HashSet<String> = st.presence.borrow_mut().drain().map(|(g, _)| g).collect();
    groups.extend(st.presence_dirty.borrow_mut().drain().map(|(g, _)| g));
    let mut pipe = redis::pipe();
    for g in &groups {
        pipe.cmd("HDEL").arg(st.presence_key(g)).arg(&st.node).ignore();
    }
    pipe.cmd("DEL").arg(st.liveness_key(&st.node)).ignore();
    let _ = tokio::time::timeout(st.timing.op_timeout, pipe.query_async::<()>(con)).await;
}

/// Serves one connection until it fails (returns why) or the bridge stops.
async fn run_session(st: &State, mut s: Session) -> String {
    let every = st.timing.liveness_every;
    let mut refresh = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut flush_at: Option<tokio::time::Instant> = None;
    // Changes made while connecting.
    st.subs_changed.notify_one();
    if !st.presence_dirty.borrow().is_empty() {
        st.presence_changed.notify_one();
    }
    loop {
        // Biased so a flood of messages cannot starve the housekeeping: the
        // message stream is polled last.
        tokio::select! {
            biased;
            _ = st.stop.notified() => return "closed".into(),
            _ = st.broken.notified() => {
                let ping = redis::cmd("PING");
                if let Err(e) = timed(st, "PING", ping.query_async::<redis::Value>(&mut s.cmd)).await {
                    return format!("connection lost ({e})");
                }
            }
            _ = st.subs_changed.notified() => {
                if let Err(e) = reconcile(st, &mut s).await {
                    return e;
                }
            }
            _ = st.presence_changed.notified() => {
                flush_at.get_or_insert_with(|| tokio::time::Instant::now() + st.timing.presence_debounce);
            }
            _ = tokio::time::sleep_until(flush_at.unwrap_or_else(tokio::time::Instant::now)), if flush_at.is_some() => {
                flush_at = None;
                if let Err(e) = flush_presence(st, &mut s.cmd).await {
                    return e;
                }
            }
            _ = refresh.tick() => {
                if let Err(e) = refresh_liveness(st, &mut s).await {
                    return e;
                }
            }
            m = s.stream.next() => match m {
                Some(msg) => {
                    deliver(st, &msg);
                    let hint = st.yield_hint.borrow().as_ref().is_some_and(|f| f.replace(false));
                    if hint {
                        tokio::task::yield_now().await;
                    }
                }
                None => return "connection to Redis lost".into(),
            },
        }
    }
}

fn deliver(st: &State, msg: &redis::Msg) {
    let Some(group) = msg.get_channel_name().strip_prefix(&format!("{}g:", st.prefix)) else { return };
    let Some((node, payload)) = open_envelope(msg.get_payload_bytes()) else { return };
    // Own echoes, and stragglers after an UNSUBSCRIBE, are dropped.
    if node == st.node || !st.wanted.borrow().contains_key(group) {
        return;
    }
    (st.on_event)(BridgeEvent::Message { group: group.to_string(), from_node: node.to_string(), payload: Bytes::copy_from_slice(payload) });
}

/// Brings the connection's subscriptions in line with `wanted`.
async fn reconcile(st: &State, s: &mut Session) -> Result<(), String> {
    let (add, remove): (Vec<String>, Vec<String>) = {
        let wanted = st.wanted.borrow();
        (wanted.keys().filter(|g| !s.subscribed.contains(*g)).cloned().collect(), s.subscribed.iter().filter(|g| !wanted.contains_key(*g)).cloned().collect())
    };
    if !add.is_empty() {
        timed(st, "SUBSCRIBE", s.sink.subscribe(add.iter().map(|g| st.channel(g)).collect::<Vec<_>>())).await?;
        s.subscribed.extend(add);
    }
    if !remove.is_empty() {
        timed(st, "UNSUBSCRIBE", s.sink.unsubscribe(remove.iter().map(|g| st.channel(g)).collect::<Vec<_>>())).await?;
        for g in &remove {
            s.subscribed.remove(g);
        }
    }
    Ok(())
}

async fn flush_presence(st: &State, con: &mut MultiplexedConnection) -> Result<(), String> {
    let batch: Vec<(String, u64)> = st.presence_dirty.borrow_mut().drain().collect();
    if batch.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for (g, n) in &batch {
        if *n == 0 {
            pipe.cmd("HDEL").arg(st.presence_key(g)).arg(&st.node).ignore();
        } else {
            pipe.cmd("HSET").arg(st.presence_key(g)).arg(&st.node).arg(*n).ignore();
        }
    }
    if let Err(e) = timed(st, "writing presence", pipe.query_async::<()>(con)).await {
        // Put back what a newer change has not replaced.
        let mut dirty = st.presence_dirty.borrow_mut();
        for (g, n) in batch {
            dirty.entry(g).or_insert(n);
        }
        return Err(e);
    }
    Ok(())
}

/// Refreshes the liveness key (rewriting all presence if it had expired,
/// since readers then removed this node's fields) and pings the PubSub
/// connection, which would otherwise never notice a silent peer.
async fn refresh_liveness(st: &State, s: &mut Session) -> Result<(), String> {
    let mut pipe = redis::pipe();
    pipe.cmd("EXISTS").arg(st.liveness_key(&st.node));
    pipe.add_command(liveness_set(st)).ignore();
    let (existed,): (i64,) = timed(st, "refreshing liveness", pipe.query_async(&mut s.cmd)).await?;
    if existed == 0 {
        mark_all_dirty(st);
        flush_presence(st, &mut s.cmd).await?;
    }
    timed(st, "PING (pubsub)", s.sink.ping::<redis::Value>()).await?;
    Ok(())
}

#[cfg(test)]
mod tests;
