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
    stats.skipped.fetch_add(fanout.skipped, Relaxed);
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

/// HOOK (cluster): a local publish after its local fan-out reached `local`
/// members. Without a bridge it answers Perl at once; with one it would
/// PUBLISH `encode_wire(&message, exclude)` and answer once Redis accepted it
/// (or fail with "redis unavailable: ...").
pub fn forward_publish(ctx: &Rc<IoCtx>, token: u64, group: &str, message: GroupMessage, exclude: Option<Id>, local: u64) {
    let _ = (group, message, exclude);
    reply(ctx, token, Ok(Value::Int(local as i64)));
}

/// HOOK (cluster): `group` now has `members` local stream members (for presence).
fn presence_changed(ctx: &Rc<IoCtx>, group: &str, members: usize) {
    let _ = (ctx, group, members);
}

/// HOOK (cluster): this node began (`true`) or stopped wanting the messages
/// of `group` (a first member or Perl subscriber came, the last one went).
fn interest_changed(ctx: &Rc<IoCtx>, group: &str, interested: bool) {
    let _ = (ctx, group, interested);
}

/// Answers a query from Perl. Without a cluster backend `cluster_count` is
/// the local count and Redis commands fail.
pub fn query(ctx: &Rc<IoCtx>, token: u64, q: Query) {
    let result = match q {
        Query::ClusterCount { group } => Ok(Value::Int(ctx.groups.borrow().count(&group) as i64)),
        Query::Redis { .. } => Err("no redis backend (set the pubsub option)".to_string()),
    };
    reply(ctx, token, result);
}

/// Sends Perl the answer for `token`.
pub fn reply(ctx: &IoCtx, token: u64, result: Result<Value, String>) {
    ctx.shared.events.push(Event::Reply { token, result: Box::new(result) });
}
