//! Groups: named sets of WebSocket and SSE streams, and fan-out of one
//! encoded frame to N writers (IO thread).
//!
//! Perl joins streams to groups and publishes with [`GroupCommand`]s; a
//! publish is encoded once per protocol ([`groups::encode_ws`],
//! [`groups::encode_sse`]) and the shared `Bytes` pushed onto each member's
//! inbox, where the member's own select writes it through its writer.
//! Slow members (more than `group_max_buffered` bytes unwritten, counted in
//! the same flow counters as the app's own sends) are dropped or skipped per
//! `group_overflow`; nobody waits for them. Perl subscribers get
//! [`Event::GroupMessage`]; answers to publishes and queries come back as
//! [`Event::Reply`] with Perl's token.
//!
//! Cluster wiring (the Redis bridge) plugs in at four places, all in this
//! file: [`forward_publish`] (a local publish, after local fan-out),
//! [`deliver_remote`] (a message from another node), [`presence_changed`]
//! and [`interest_changed`]; and [`query`] answers `cluster_count` and
//! Redis commands. Payloads between nodes are [`wire::encode_wire`] /
//! [`wire::decode_wire`].

pub mod groups;
pub mod redis;
pub mod wire;

use crate::seam::event::{Event, GroupCommand, GroupDelivery, GroupMessage, Id, Query, Value};
use crate::server::ctx::IoCtx;
use redis::{Bridge, BridgeEvent, Reply};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub use wire::{decode_wire, encode_wire, WireMessage};

/// Engine-wide group counters, readable from Perl at any time.
#[derive(Debug, Default)]
pub struct GroupStats {
    /// Messages published on this node.
    pub published: AtomicU64,
    /// Messages queued for a member (one per member per message).
    pub delivered: AtomicU64,
    /// Of `delivered`, those the fan-out wrote straight to the member's socket.
    pub delivered_direct: AtomicU64,
    /// Messages left out for a slow member (`group_overflow => 'skip'`).
    pub skipped: AtomicU64,
    /// Slow members dropped (`group_overflow => 'drop'`).
    pub dropped: AtomicU64,
    /// Set by the Redis bridge.
    pub redis_publish_failed: AtomicU64,
    pub redis_reconnects: AtomicU64,
    /// 1 while the bridge is connected.
    pub redis_connected: AtomicU64,
}

/// Applies one group command from Perl.
pub fn command(ctx: &Rc<IoCtx>, cmd: GroupCommand) {
    match cmd {
        GroupCommand::Join { id, group, counters, sse } => {
            // A stream that already ended has no inbox: nothing to join.
            let Some(inbox) = ctx.registry.borrow().get(&id).cloned() else { return };
            let was = ctx.groups.borrow().interested(&group);
            let joined = ctx.groups.borrow_mut().join(id, &group, || groups::Member { inbox, counters, sse });
            if let Some(n) = joined {
                if !was {
                    interest_changed(ctx, &group, true);
                }
                presence_changed(ctx, &group, n);
            }
        }
        GroupCommand::Leave { id, group } => {
            let left = ctx.groups.borrow_mut().leave(id, &group);
            if let Some(n) = left {
                after_leave(ctx, &group, n);
            }
        }
        GroupCommand::Publish { token, group, message, exclude } => {
            ctx.shared.stats.groups.published.fetch_add(1, Relaxed);
            let local = deliver(ctx, &group, &message, exclude, None);
            forward_publish(ctx, token, &group, message, exclude, local);
        }
        GroupCommand::Subscribe { group } => {
            let was = ctx.groups.borrow().interested(&group);
            ctx.groups.borrow_mut().set_perl(&group, true);
            if !was {
                interest_changed(ctx, &group, true);
            }
        }
        GroupCommand::Unsubscribe { group } => {
            ctx.groups.borrow_mut().set_perl(&group, false);
            if !ctx.groups.borrow().interested(&group) {
                interest_changed(ctx, &group, false);
            }
        }
    }
}

/// Stream `id` ended (or was dropped): it leaves all its groups. Called
/// wherever a stream leaves the id registry; costs one lookup when the
/// engine has no group members.
pub fn stream_ended(ctx: &Rc<IoCtx>, id: Id) {
    if !ctx.groups.borrow().has_member(id) {
        return;
    }
    let left = ctx.groups.borrow_mut().leave_all(id);
    for (group, n) in left {
        after_leave(ctx, &group, n);
    }
}

fn after_leave(ctx: &Rc<IoCtx>, group: &str, members: usize) {
    presence_changed(ctx, group, members);
    if !ctx.groups.borrow().interested(group) {
        interest_changed(ctx, group, false);
    }
}

/// Local fan-out of `message`: every member of `group` but `exclude`, then
/// Perl's subscribers (told `node`, the publisher, `None` for this node).
/// Returns the members it was queued for.
fn deliver(ctx: &Rc<IoCtx>, group: &str, message: &GroupMessage, exclude: Option<Id>, node: Option<&str>) -> u64 {
    let cfg = &ctx.shared.config;
    let stats = &ctx.shared.stats.groups;
    let fanout = ctx.groups.borrow().publish(group, message, exclude, cfg.group_overflow, cfg.group_max_buffered);
    stats.delivered.fetch_add(fanout.delivered, Relaxed);
    stats.delivered_direct.fetch_add(fanout.direct, Relaxed);
    stats.skipped.fetch_add(fanout.skipped, Relaxed);
    if fanout.backlog {
        ctx.group_backlog.set(true);
    }
    if !fanout.dropped.is_empty() {
        stats.dropped.fetch_add(fanout.dropped.len() as u64, Relaxed);
        for id in fanout.dropped {
            stream_ended(ctx, id);
        }
    }
    if fanout.perl {
        ctx.shared.events.push(Event::GroupMessage(Box::new(GroupDelivery {
            group: group.to_string(),
            message: message.clone(),
            node: node.map(str::to_string),
        })));
    }
    fanout.delivered
}

/// A message another node published to `group` (the bridge calls this with
/// the payload it received): delivered to the local members and Perl
/// subscribers. The publisher's `exclude` names a connection of its own
/// process, so it is ignored here. A payload that does not decode is logged.
pub fn deliver_remote(ctx: &Rc<IoCtx>, group: &str, from_node: &str, payload: &[u8]) {
    match decode_wire(payload) {
        Ok(w) => {
            deliver(ctx, group, &w.message, None, Some(from_node));
        }
        Err(e) => ctx.shared.events.push(Event::Log { level: "warn", message: format!("group '{group}': message from {from_node} dropped: {e}") }),
    }
}

/// Starts the Redis bridge when the `pubsub` option is set; called once on
/// the IO thread before anything is accepted. Its events come back here:
/// messages from other nodes go to the local members, connection changes to
/// the counters and the log (a publish refused while Redis was away is also
/// failed to its publisher, so nothing is lost silently).
pub fn start_bridge(ctx: &Rc<IoCtx>) {
    let cfg = &ctx.shared.config;
    let Some(url) = cfg.pubsub.clone() else { return };
    let weak = Rc::downgrade(ctx);
    let where_ = url.redacted();
    let on_event = Box::new(move |ev: BridgeEvent| {
        let Some(ctx) = weak.upgrade() else { return };
        let stats = &ctx.shared.stats.groups;
        let log = |level: &'static str, message: String| ctx.shared.events.push(Event::Log { level, message });
        match ev {
            BridgeEvent::Message { group, from_node, payload } => deliver_remote(&ctx, &group, &from_node, &payload),
            BridgeEvent::Connected => {
                stats.redis_connected.store(1, Relaxed);
                log("info", format!("pubsub: connected to {where_}"));
            }
            BridgeEvent::Disconnected { error } => {
                stats.redis_connected.store(0, Relaxed);
                log("warn", format!("pubsub: lost {where_} ({error}); group messages stay local and their publishes fail until it is back"));
            }
            BridgeEvent::Reconnected { down_for, failed_publishes } => {
                stats.redis_connected.store(1, Relaxed);
                stats.redis_reconnects.fetch_add(1, Relaxed);
                log("warn", format!("pubsub: {where_} is back after {:.1} s; {failed_publishes} publish(es) could not reach other nodes meanwhile", down_for.as_secs_f64()));
            }
        }
    });
    let bridge = Bridge::start(url, cfg.node.clone(), cfg.pubsub_prefix.clone(), on_event);
    bridge.yield_when(ctx.group_backlog.clone());
    *ctx.bridge.borrow_mut() = Some(bridge);
}

/// How long a starting engine waits for Redis before it accepts anyway.
pub const BRIDGE_START_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Waits (at most [`BRIDGE_START_WAIT`]) until the bridge's first
/// connection is up, so the first requests of a fresh worker do not find
/// their publishes failing; a Redis that stays away is logged and the engine
/// serves without it (publishes then fail until it comes).
pub async fn await_bridge(ctx: &Rc<IoCtx>) {
    let Some(b) = bridge(ctx) else { return };
    let until = tokio::time::Instant::now() + BRIDGE_START_WAIT;
    while !b.connected() {
        if tokio::time::Instant::now() >= until {
            ctx.shared.events.push(Event::Log {
                level: "warn",
                message: format!("pubsub: Redis not reachable after {} s; serving meanwhile, group publishes fail until it is", BRIDGE_START_WAIT.as_secs()),
            });
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Closes the bridge at the end of shutdown (this node's presence is
/// removed from Redis), waiting at most a second for Redis.
pub async fn stop_bridge(ctx: &Rc<IoCtx>) {
    let bridge = ctx.bridge.borrow_mut().take();
    if let Some(b) = bridge {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), b.close()).await;
    }
}

fn bridge(ctx: &IoCtx) -> Option<Rc<Bridge>> {
    ctx.bridge.borrow().clone()
}

/// A local publish after its local fan-out reached `local` members. Without
/// a bridge Perl is answered at once; with one the message is also
/// PUBLISHed and Perl is answered when Redis took it, or told
/// "redis unavailable: ..." (the local members still got it). Each publish
/// is its own task, started in order, so one slow reply holds up no other.
pub fn forward_publish(ctx: &Rc<IoCtx>, token: u64, group: &str, message: GroupMessage, exclude: Option<Id>, local: u64) {
    let Some(b) = bridge(ctx) else {
        return reply(ctx, token, Ok(Value::Int(local as i64)));
    };
    let ctx = ctx.clone();
    let group = group.to_string();
    let payload = encode_wire(&message, exclude);
    tokio::task::spawn_local(async move {
        let result = match b.publish(&group, payload).await {
            Ok(_) => Ok(Value::Int(local as i64)),
            Err(e) => {
                ctx.shared.stats.groups.redis_publish_failed.fetch_add(1, Relaxed);
                Err(e)
            }
        };
        reply(&ctx, token, result);
    });
}

/// `group` now has `members` local stream members (presence in Redis).
fn presence_changed(ctx: &Rc<IoCtx>, group: &str, members: usize) {
    if let Some(b) = bridge(ctx) {
        b.set_presence(group, members as u64);
    }
}

/// This node began (`true`) or stopped wanting the messages of `group` (a
/// first member or Perl subscriber came, the last one went): the bridge
/// subscribes or unsubscribes its Redis channel.
fn interest_changed(ctx: &Rc<IoCtx>, group: &str, interested: bool) {
    if let Some(b) = bridge(ctx) {
        if interested {
            b.subscribe(group)
        } else {
            b.unsubscribe(group)
        }
    }
}

/// Answers a query from Perl. Without a bridge `cluster_count` is the local
/// count and Redis commands fail; with one both go to Redis.
pub fn query(ctx: &Rc<IoCtx>, token: u64, q: Query) {
    let Some(b) = bridge(ctx) else {
        let result = match q {
            Query::ClusterCount { group } => Ok(Value::Int(ctx.groups.borrow().count(&group) as i64)),
            Query::Redis { .. } => Err("no redis backend (set the pubsub option)".to_string()),
        };
        return reply(ctx, token, result);
    };
    let ctx = ctx.clone();
    tokio::task::spawn_local(async move {
        let result = match q {
            Query::ClusterCount { group } => b.cluster_count(&group).await.map(|n| Value::Int(n as i64)),
            Query::Redis { args } => b.command(args).await.map(value_of),
        };
        reply(&ctx, token, result);
    });
}

fn value_of(r: Reply) -> Value {
    match r {
        Reply::Nil => Value::Nil,
        Reply::Int(n) => Value::Int(n),
        Reply::Data(d) => Value::Data(d.into()),
        Reply::Status(s) => Value::Status(s),
        Reply::Array(a) => Value::Array(a.into_iter().map(value_of).collect()),
    }
}

/// Sends Perl the answer for `token`.
pub fn reply(ctx: &IoCtx, token: u64, result: Result<Value, String>) {
    ctx.shared.events.push(Event::Reply { token, result: Box::new(result) });
}
