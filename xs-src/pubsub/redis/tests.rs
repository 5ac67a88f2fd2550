//! Bridge tests against a real Debian `redis-server` each test starts on a
//! free loopback port (killed on drop, also when the test panics). Without
//! redis-server (or openssl, for TLS) a test is skipped with a message,
//! except under CI=true, where that is a failure.

use super::*;
use std::future::Future;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

const LIMIT: Duration = Duration::from_secs(40);

fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{name} is needed for the Redis bridge tests (setup.sh installs it) and was not found");
        }
        eprintln!("SKIPPED: {name} not found (apt-get install redis-server openssl); Redis bridge test not run");
    }
    found
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

static DIRS: AtomicUsize = AtomicUsize::new(0);

/// A scratch directory removed on drop.
struct TempDir(PathBuf);
impl TempDir {
    fn new(what: &str) -> TempDir {
        let n = DIRS.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("pagi-redis-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A redis-server child process.
struct RedisServer {
    bin: PathBuf,
    child: Option<Child>,
    /// The port clients use (the TLS port when `tls` is set).
    port: u16,
    extra: Vec<String>,
    tls: bool,
    dir: TempDir,
}

impl RedisServer {
    fn start(extra: &[&str]) -> Option<RedisServer> {
        Self::start_on(free_port(), extra, false)
    }

    fn start_on(port: u16, extra: &[&str], tls: bool) -> Option<RedisServer> {
        let bin = tool("redis-server")?;
        let mut s = RedisServer { bin, child: None, port, extra: extra.iter().map(|s| s.to_string()).collect(), tls, dir: TempDir::new("server") };
        s.spawn();
        Some(s)
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let mut args: Vec<String> = vec!["--bind".into(), "127.0.0.1".into(), "--save".into(), "".into(), "--appendonly".into(), "no".into()];
        if self.tls {
            args.extend(["--port".into(), "0".into(), "--tls-port".into(), port]);
        } else {
            args.extend(["--port".into(), port]);
        }
        args.extend(["--dir".into(), self.dir.0.display().to_string()]);
        args.extend(self.extra.iter().cloned());
        let log = std::fs::File::create(self.dir.0.join("redis.log")).unwrap();
        let mut cmd = Command::new(&self.bin);
        cmd.args(&args).stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
        // Dies with the test process even if it is killed (no Drop then).
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawn redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let log = std::fs::read_to_string(self.dir.0.join("redis.log")).unwrap_or_default();
                panic!("redis-server exited ({status}) on port {}:\n{log}", self.port);
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "redis-server did not listen on {} within 10 s", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn url(&self, rest: &str) -> RedisUrl {
        parse_url(&format!("redis://127.0.0.1:{}{rest}", self.port)).unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `f` on a current-thread runtime inside a LocalSet (as the engine's
/// IO thread does), failing the test after `LIMIT`.
fn run<F: Future<Output = ()>>(f: F) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        tokio::time::timeout(LIMIT, f).await.expect("test took longer than its time limit");
    });
}

/// Collects a bridge's events.
#[derive(Clone, Default)]
struct Events {
    list: Rc<RefCell<Vec<BridgeEvent>>>,
    notify: Rc<Notify>,
}

impl Events {
    fn sink(&self) -> Box<dyn Fn(BridgeEvent)> {
        let me = self.clone();
        Box::new(move |e| {
            me.list.borrow_mut().push(e);
            me.notify.notify_waiters();
        })
    }
    /// Waits (at most 10 s) for an event matching `pred` and returns it.
    async fn wait(&self, what: &str, pred: impl Fn(&BridgeEvent) -> bool) -> BridgeEvent {
        self.wait_from(0, what, pred).await
    }
    async fn wait_from(&self, from: usize, what: &str, pred: impl Fn(&BridgeEvent) -> bool) -> BridgeEvent {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let notified = self.notify.notified();
            if let Some(e) = self.list.borrow().iter().skip(from).find(|e| pred(e)) {
                return e.clone();
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("no {what} event within 10 s; got {:?}", self.list.borrow());
            }
        }
    }
    fn len(&self) -> usize {
        self.list.borrow().len()
    }
    fn messages(&self) -> Vec<(String, String, Bytes)> {
        self.list
            .borrow()
            .iter()
            .filter_map(|e| match e {
                BridgeEvent::Message { group, from_node, payload } => Some((group.clone(), from_node.clone(), payload.clone())),
                _ => None,
            })
            .collect()
    }
}

fn is_connected(e: &BridgeEvent) -> bool {
    matches!(e, BridgeEvent::Connected)
}

fn start(url: &RedisUrl, node: &str, prefix: &str) -> (Rc<Bridge>, Events) {
    let ev = Events::default();
    (Bridge::start(url.clone(), node.into(), prefix.into(), ev.sink()), ev)
}

/// Nodes "node-a" and "node-b" (prefix "t:"), once both are connected.
async fn two_connected_nodes(url: &RedisUrl) -> ((Rc<Bridge>, Events), (Rc<Bridge>, Events)) {
    let (a, ea) = start(url, "node-a", "t:");
    let (b, eb) = start(url, "node-b", "t:");
    ea.wait("Connected", is_connected).await;
    eb.wait("Connected", is_connected).await;
    ((a, ea), (b, eb))
}

fn args(a: &[&str]) -> Vec<Vec<u8>> {
    a.iter().map(|s| s.as_bytes().to_vec()).collect()
}

/// Waits until `channel` has `n` subscribers (SUBSCRIBE has taken effect).
async fn wait_numsub(b: &Bridge, channel: &str, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = b.command(args(&["PUBSUB", "NUMSUB", channel])).await.unwrap();
        if r == Reply::Array(vec![Reply::Data(channel.as_bytes().to_vec()), Reply::Int(n)]) {
            return;
        }
        assert!(Instant::now() < deadline, "{channel} never had {n} subscribers: {r:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `cluster_count` until it equals `want`.
async fn wait_count(b: &Bridge, group: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = b.cluster_count(group).await.unwrap();
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "cluster_count({group}) stayed {got}, wanted {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn parse_url_cases() {
    let u = parse_url("redis://127.0.0.1").unwrap();
    assert_eq!((u.host.as_str(), u.port, u.tls, u.db, u.password.clone(), u.username.clone(), u.tls_ca.clone()), ("127.0.0.1", 6379, false, 0, None, None, None));
    let u = parse_url("redis://:s%40cr%3At@localhost:6380/5").unwrap();
    assert_eq!((u.host.as_str(), u.port, u.db, u.password.as_deref(), u.username.as_deref()), ("localhost", 6380, 5, Some("s@cr:t"), None));
    let u = parse_url("REDIS://app:pw@h:1/").unwrap();
    assert_eq!((u.username.as_deref(), u.password.as_deref(), u.db), (Some("app"), Some("pw"), 0));
    let u = parse_url("redis://:p@ss@h").unwrap();
    assert_eq!(u.password.as_deref(), Some("p@ss"), "the last @ ends the credentials");
    let u = parse_url("rediss://[::1]:7000/2").unwrap();
    assert_eq!((u.host.as_str(), u.port, u.tls, u.db), ("::1", 7000, true, 2));
    assert_eq!(format!("{:?}", parse_url("redis://:secret@h/1").unwrap()), "redis://:***@h:6379/1", "Debug hides the password");

    let dir = TempDir::new("url");
    let ca = dir.0.join("ca.pem");
    let bad = |url: &str, part: &str| {
        let e = parse_url(url).expect_err(url);
        assert!(e.starts_with("redis URL: ") && e.contains(part), "{url}: {e}");
        assert!(!e.contains("secret"), "{url}: the error shows the password: {e}");
    };
    bad("", "must start with redis:// or rediss://");
    bad("127.0.0.1:6379", "must start with");
    bad("http://h", "unsupported scheme 'http://'");
    bad("redis://", "missing host");
    bad("redis://:secret@/0", "missing host");
    bad("redis://h:0", "bad port '0'");
    bad("redis://h:99999", "bad port '99999'");
    bad("redis://h:x1", "bad port 'x1'");
    bad("redis://h/abc", "bad database '/abc'");
    bad("redis://h/1/2", "bad database");
    bad("redis://h/-1", "bad database");
    bad("redis://secret@h", "has no password");
    bad("redis://user:@h", "needs a password");
    bad("redis://h?timeout=1", "unknown parameter 'timeout'");
    bad("rediss://h/#insecure", "fragments");
    bad("redis://h/?ca=/x.pem", "needs rediss://");
    bad("rediss://h/?ca=", "needs a file path");
    bad(&format!("rediss://h/?ca={}", ca.display()), "cannot read CA file");
    std::fs::write(&ca, "not a certificate\n").unwrap();
    bad(&format!("rediss://h/?ca={}", ca.display()), "holds no PEM certificate");
    bad("redis://[::1/", "unclosed '['");
    bad("redis://:%zz@h", "bad %-escape");
}

#[test]
fn envelope_round_trip() {
    let e = envelope("node-a", b"\x00payload");
    assert_eq!(open_envelope(&e), Some(("node-a", &b"\x00payload"[..])));
    assert_eq!(open_envelope(b"hello"), None);
    assert_eq!(open_envelope(b"PGB1\x00\x00\x00\x09abc"), None, "a length past the end");
}

#[test]
fn publish_reaches_other_node_once() {
    let Some(server) = RedisServer::start(&[]) else { return };
    run(async move {
        let url = server.url("");
        let ((a, ea), (b, eb)) = two_connected_nodes(&url).await;
        assert!(a.connected() && b.connected());
        // A subscribes too, so it would see its own echo if it were not filtered.
        a.subscribe("room");
        b.subscribe("room");
        b.subscribe("room");
        wait_numsub(&a, "t:g:room", 2).await;

        assert_eq!(a.publish("room", Bytes::from_static(b"hello")).await, Ok(2), "both nodes' subscriptions received it");
        let got = eb.wait("Message", |e| matches!(e, BridgeEvent::Message { .. })).await;
        assert_eq!(got, BridgeEvent::Message { group: "room".into(), from_node: "node-a".into(), payload: Bytes::from_static(b"hello") });
        // Foreign data on the channel (no envelope) is ignored.
        a.command(args(&["PUBLISH", "t:g:room", "raw"])).await.unwrap();
        b.publish("room", Bytes::from_static(b"back")).await.unwrap();
        ea.wait("Message", |e| matches!(e, BridgeEvent::Message { .. })).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(eb.messages(), vec![("room".into(), "node-a".into(), Bytes::from_static(b"hello"))], "exactly once, no echo, no foreign data");
        assert_eq!(ea.messages(), vec![("room".into(), "node-b".into(), Bytes::from_static(b"back"))]);

        // Reference counts: B subscribed twice, so one unsubscribe keeps it.
        b.unsubscribe("room");
        tokio::time::sleep(Duration::from_millis(100)).await;
        wait_numsub(&a, "t:g:room", 2).await;
        b.unsubscribe("room");
        wait_numsub(&a, "t:g:room", 1).await;
        b.unsubscribe("room"); // one too many: no-op
        a.publish("room", Bytes::from_static(b"gone")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(eb.messages().len(), 1, "no delivery after the last unsubscribe");
        a.close().await;
        b.close().await;
    });
}

#[test]
fn password_db_and_commands() {
    let Some(server) = RedisServer::start(&["--requirepass", "s3cret"]) else { return };
    run(async move {
        let (bad, ebad) = start(&server.url(""), "n0", "t:");
        let e = ebad.wait("Disconnected", |e| matches!(e, BridgeEvent::Disconnected { .. })).await;
        let BridgeEvent::Disconnected { error } = e else { unreachable!() };
        eprintln!("without a password: {error}");
        assert!(error.contains("NOAUTH") || error.contains("uthentication"), "no password: {error}");
        assert!(!bad.connected());
        let e = bad.command(args(&["PING"])).await.unwrap_err();
        assert!(e.starts_with("redis unavailable: "), "{e}");
        let e = bad.publish("g", Bytes::new()).await.unwrap_err();
        assert!(e.starts_with("redis unavailable: "), "{e}");
        drop(bad);

        let mut u = server.url("");
        u.password = Some("wrong".into());
        let (wrong, ewrong) = start(&u, "n0", "t:");
        let e = ewrong.wait("Disconnected", |e| matches!(e, BridgeEvent::Disconnected { .. })).await;
        assert!(format!("{e:?}").contains("uthentication failed"), "{e:?}");
        assert!(!format!("{e:?}").contains("wrong"), "the error shows the password: {e:?}");
        drop(wrong);

        let (b3, e3) = start(&server.url("").clone_with(|u| {
            u.password = Some("s3cret".into());
            u.db = 3;
        }), "n3", "t:");
        e3.wait("Connected", is_connected).await;
        let p = parse_url(&format!("redis://:s3cret@127.0.0.1:{}", server.port)).unwrap();
        let (b0, e0) = start(&p, "n0", "t:");
        e0.wait("Connected", is_connected).await;

        assert_eq!(b3.command(args(&["SET", "k", "v", "EX", "60"])).await, Ok(Reply::Status("OK".into())));
        assert_eq!(b3.command(args(&["GET", "k"])).await, Ok(Reply::Data(b"v".to_vec())));
        assert_eq!(b0.command(args(&["GET", "k"])).await, Ok(Reply::Nil), "db 0 does not see db 3");
        assert_eq!(b3.command(vec![b"SET".to_vec(), b"bin".to_vec(), vec![0, 255, 10]]).await, Ok(Reply::Status("OK".into())));
        assert_eq!(b3.command(args(&["GET", "bin"])).await, Ok(Reply::Data(vec![0, 255, 10])));
        assert_eq!(b3.command(args(&["INCR", "n"])).await, Ok(Reply::Int(1)));
        b3.command(args(&["RPUSH", "l", "x", "y"])).await.unwrap();
        assert_eq!(b3.command(args(&["LRANGE", "l", "0", "-1"])).await, Ok(Reply::Array(vec![Reply::Data(b"x".to_vec()), Reply::Data(b"y".to_vec())])));
        assert_eq!(b3.command(args(&["DEL", "k", "bin"])).await, Ok(Reply::Int(2)));
        let e = b3.command(args(&["INCR", "l"])).await.unwrap_err();
        assert!(e.starts_with("redis error: ") && e.contains("WRONGTYPE"), "{e}");
        let e = b3.command(args(&["select", "1"])).await.unwrap_err();
        assert!(e.contains("not allowed"), "{e}");
        assert!(b3.command(vec![]).await.is_err());
        b3.close().await;
        b0.close().await;
        let e = b3.command(args(&["PING"])).await.unwrap_err();
        assert!(e.contains("closed"), "{e}");
    });
}

trait CloneWith {
    fn clone_with(&self, f: impl FnOnce(&mut Self)) -> Self;
}
impl CloneWith for RedisUrl {
    fn clone_with(&self, f: impl FnOnce(&mut Self)) -> Self {
        let mut c = self.clone();
        f(&mut c);
        c
    }
}

#[test]
fn reconnects_after_redis_restart() {
    let Some(mut server) = RedisServer::start(&[]) else { return };
    run(async move {
        let url = server.url("");
        let ((a, ea), (b, eb)) = two_connected_nodes(&url).await;
        b.subscribe("room");
        a.set_presence("room", 2);
        b.set_presence("room", 1);
        wait_numsub(&a, "t:g:room", 1).await;
        wait_count(&b, "room", 3).await;

        server.kill();
        let down = ea.wait("Disconnected", |e| matches!(e, BridgeEvent::Disconnected { .. })).await;
        eb.wait("Disconnected", |e| matches!(e, BridgeEvent::Disconnected { .. })).await;
        assert!(!a.connected());
        eprintln!("reported: {down:?}");
        for _ in 0..3 {
            let e = a.publish("room", Bytes::from_static(b"lost")).await.unwrap_err();
            assert!(e.starts_with("redis unavailable: "), "{e}");
        }
        assert!(a.cluster_count("room").await.unwrap_err().starts_with("redis unavailable: "));
        // Changes while down are written after reconnecting.
        a.set_presence("room", 5);
        // Let a few reconnection attempts fail (and the backoff grow).
        tokio::time::sleep(Duration::from_millis(400)).await;
        let before = ea.len();
        assert_eq!(ea.list.borrow().iter().filter(|e| matches!(e, BridgeEvent::Disconnected { .. })).count(), 1, "one Disconnected per outage");

        let restarted = Instant::now();
        server.restart();
        let back = ea.wait_from(before, "Reconnected", |e| matches!(e, BridgeEvent::Reconnected { .. })).await;
        let BridgeEvent::Reconnected { down_for, failed_publishes } = back else { unreachable!() };
        assert_eq!(failed_publishes, 3);
        assert!(down_for >= Duration::from_millis(400), "down_for {down_for:?}");
        eb.wait_from(0, "Reconnected", |e| matches!(e, BridgeEvent::Reconnected { .. })).await;
        assert!(restarted.elapsed() < Duration::from_secs(4), "backoff is capped at 2 s: took {:?}", restarted.elapsed());
        assert!(a.connected() && b.connected());

        // B's subscription was re-established before Reconnected was reported.
        assert_eq!(a.publish("room", Bytes::from_static(b"again")).await, Ok(1));
        let got = eb.wait("Message", |e| matches!(e, BridgeEvent::Message { .. })).await;
        assert_eq!(got, BridgeEvent::Message { group: "room".into(), from_node: "node-a".into(), payload: Bytes::from_static(b"again") });
        assert_eq!(eb.messages().len(), 1, "nothing published while down arrives later");
        // Presence was rewritten to the new (empty) Redis.
        wait_count(&b, "room", 6).await;
        a.close().await;
        b.close().await;
    });
}

#[test]
fn starts_while_redis_is_down() {
    let Some(_) = tool("redis-server") else { return };
    let port = free_port();
    run(async move {
        let url = parse_url(&format!("redis://127.0.0.1:{port}")).unwrap();
        let (a, ea) = start(&url, "node-a", "t:");
        a.subscribe("early");
        let e = ea.wait("Disconnected", |e| matches!(e, BridgeEvent::Disconnected { .. })).await;
        assert!(format!("{e:?}").to_lowercase().contains("refused"), "{e:?}");
        assert!(a.publish("early", Bytes::new()).await.is_err());
        // Blocks the runtime briefly: the bridge's retries just wait.
        let server = RedisServer::start_on(port, &[], false).unwrap();
        ea.wait("Connected", is_connected).await;
        wait_numsub(&a, "t:g:early", 1).await;
        a.close().await;
        drop(server);
    });
}

#[test]
fn cluster_count_across_nodes() {
    let Some(server) = RedisServer::start(&[]) else { return };
    run(async move {
        let url = server.url("");
        let ((a, _ea), (b, _eb)) = two_connected_nodes(&url).await;
        assert_eq!(a.cluster_count("room").await, Ok(0));
        a.set_presence("room", 3);
        assert_eq!(a.cluster_count("room").await, Ok(3), "its own count is local, at once");
        b.set_presence("room", 4);
        b.set_presence("other", 1);
        wait_count(&a, "room", 7).await;
        wait_count(&b, "room", 7).await;
        assert_eq!(a.cluster_count("other").await, Ok(1));

        // A node that crashes (no close) stops counting once its liveness key expires.
        let fast = Timing { liveness_every: Duration::from_millis(200), liveness_ttl: Duration::from_secs(1), ..Timing::default() };
        let ec = Events::default();
        let c = Bridge::start_with(url.clone(), "node-c".into(), "t:".into(), ec.sink(), fast);
        ec.wait("Connected", is_connected).await;
        c.set_presence("room", 10);
        wait_count(&a, "room", 17).await;
        // Refreshes keep it alive past its TTL.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(a.cluster_count("room").await, Ok(17));
        drop(c);
        let gone = Instant::now();
        wait_count(&a, "room", 7).await;
        assert!(gone.elapsed() < Duration::from_secs(3), "took {:?}", gone.elapsed());
        assert_eq!(b.command(args(&["HEXISTS", "t:p:room", "node-c"])).await, Ok(Reply::Int(0)), "the dead node's field was tidied away");

        b.set_presence("room", 0);
        wait_count(&a, "room", 3).await;
        b.set_presence("room", 2);
        wait_count(&a, "room", 5).await;
        b.close().await;
        assert_eq!(a.cluster_count("room").await, Ok(3), "close removes the node's presence at once");
        assert_eq!(a.cluster_count("other").await, Ok(0));
        assert_eq!(a.command(args(&["EXISTS", "t:n:node-b"])).await, Ok(Reply::Int(0)));
        let e = b.cluster_count("room").await.unwrap_err();
        assert!(e.contains("closed"), "{e}");
        a.close().await;
        // Different prefixes are different clusters.
        let (d, ed) = start(&url, "node-d", "other:");
        ed.wait("Connected", is_connected).await;
        assert_eq!(d.cluster_count("room").await, Ok(0));
        d.close().await;
    });
}

/// A CA and a server certificate for 127.0.0.1 / localhost, made with openssl.
fn make_certs(dir: &Path) -> Option<()> {
    let openssl = tool("openssl")?;
    let run = |args: &[&str]| {
        let out = Command::new(&openssl).args(args).current_dir(dir).output().expect("run openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n").unwrap();
    run(&["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=pagi test CA"]);
    run(&["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"]);
    run(&["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf"]);
    Some(())
}

#[test]
fn rediss_with_private_ca() {
    let certs = TempDir::new("tls");
    if make_certs(&certs.0).is_none() {
        return;
    }
    let p = |f: &str| certs.0.join(f).display().to_string();
    let (cert, key, ca) = (p("server.pem"), p("server.key"), p("ca.pem"));
    let Some(server) = RedisServer::start_on(free_port(), &["--tls-cert-file", &cert, "--tls-key-file", &key, "--tls-ca-cert-file", &ca, "--tls-auth-clients", "no", "--requirepass", "tlspw"], true) else { return };
    run(async move {
        let port = server.port;
        let url = parse_url(&format!("rediss://:tlspw@127.0.0.1:{port}/1?ca={ca}")).unwrap();
        let ((a, _ea), (b, eb)) = two_connected_nodes(&url).await;
        assert_eq!(a.command(args(&["PING"])).await, Ok(Reply::Status("PONG".into())));
        b.subscribe("secure");
        wait_numsub(&a, "t:g:secure", 1).await;
        assert_eq!(a.publish("secure", Bytes::from_static(b"over tls")).await, Ok(1));
        let got = eb.wait("Message", |e| matches!(e, BridgeEvent::Message { .. })).await;
        assert_eq!(got, BridgeEvent::Message { group: "secure".into(), from_node: "node-a".into(), payload: Bytes::from_static(b"over tls") });

        // The system roots do not know the test CA: refused, with a reason.
        let (c, ec) = start(&parse_url(&format!("rediss://:tlspw@127.0.0.1:{port}")).unwrap(), "node-c", "t:");
        let e = ec.wait("Disconnected", |e| matches!(e, BridgeEvent::Disconnected { .. })).await;
        let text = format!("{e:?}");
        eprintln!("system roots: {text}");
        assert!(text.contains("UnknownIssuer") || text.to_lowercase().contains("certificate"), "{text}");
        assert!(!c.connected());
        // Plain redis:// against the TLS port does not connect either.
        let (d, ed) = start(&parse_url(&format!("redis://:tlspw@127.0.0.1:{port}")).unwrap(), "node-d", "t:");
        ed.wait("Disconnected", |e| matches!(e, BridgeEvent::Disconnected { .. })).await;
        assert!(!d.connected());
        a.close().await;
        b.close().await;
    });
}
