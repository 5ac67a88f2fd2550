//! The IO thread's group registry: group -> members, member -> groups (so
//! a stream that ends leaves everything at once), which groups Perl
//! subscribed to, and the fan-out of one message to every member under the
//! slow-member policy. Knows streams only by their inbox and flow counters.

use crate::config::GroupOverflow;
use crate::seam::event::{Action, ConnCounters, GroupMessage, Id};
use crate::server::ctx::Inbox;
use bytes::{BufMut, Bytes, BytesMut};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// One stream that joined groups.
pub struct Member {
    pub inbox: Rc<Inbox>,
    pub counters: Arc<ConnCounters>,
    /// An SSE stream (else a WebSocket).
    pub sse: bool,
}

#[derive(Default)]
struct Group {
    members: HashMap<Id, Rc<Member>>,
    /// Perl subscribed to this group.
    perl: bool,
}

/// What one fan-out did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fanout {
    /// Members the message was queued for.
    pub delivered: u64,
    /// Members left out because they were slow (`skip`).
    pub skipped: u64,
    /// Members dropped because they were slow (`drop`); they still belong to
    /// their groups until the caller makes them leave.
    pub dropped: Vec<Id>,
    /// Perl subscribed to the group: the message is for Perl too.
    pub perl: bool,
    /// A member it was queued for now holds more than half of
    /// `max_buffered` unwritten: its writer should get to run before the
    /// next message is fanned out, or a burst of messages handled in one go
    /// (a batch of publishes, messages read together from Redis) would make
    /// members that read fine look slow.
    pub backlog: bool,
}

/// See the module docs.
#[derive(Default)]
pub struct Registry {
    groups: HashMap<String, Group>,
    joined: HashMap<Id, (Rc<Member>, Vec<String>)>,
}

impl Registry {
    /// Stream `id` joins `group`; `member` makes its entry on its first
    /// group. Returns the group's new member count, `None` when it already
    /// was a member.
    pub fn join(&mut self, id: Id, group: &str, member: impl FnOnce() -> Member) -> Option<usize> {
        let (m, list) = self.joined.entry(id).or_insert_with(|| (Rc::new(member()), Vec::new()));
        if list.iter().any(|g| g == group) {
            return None;
        }
        list.push(group.to_string());
        let g = self.groups.entry(group.to_string()).or_default();
        g.members.insert(id, m.clone());
        Some(g.members.len())
    }

    /// Stream `id` leaves `group`; the group's new member count, `None` when it was no member.
    pub fn leave(&mut self, id: Id, group: &str) -> Option<usize> {
        let (_, list) = self.joined.get_mut(&id)?;
        let at = list.iter().position(|g| g == group)?;
        list.swap_remove(at);
        if list.is_empty() {
            self.joined.remove(&id);
        }
        Some(self.remove_member(id, group))
    }

    /// Stream `id` ended: it leaves every group. The groups it left with their new counts.
    pub fn leave_all(&mut self, id: Id) -> Vec<(String, usize)> {
        let Some((_, list)) = self.joined.remove(&id) else { return Vec::new() };
        list.into_iter()
            .map(|g| {
                let n = self.remove_member(id, &g);
                (g, n)
            })
            .collect()
    }

    fn remove_member(&mut self, id: Id, group: &str) -> usize {
        let Some(g) = self.groups.get_mut(group) else { return 0 };
        g.members.remove(&id);
        let n = g.members.len();
        if n == 0 && !g.perl {
            self.groups.remove(group);
        }
        n
    }

    /// True when stream `id` belongs to some group (cheap: the usual answer is no).
    pub fn has_member(&self, id: Id) -> bool {
        !self.joined.is_empty() && self.joined.contains_key(&id)
    }

    /// Perl's interest in `group`; true when it changed.
    pub fn set_perl(&mut self, group: &str, on: bool) -> bool {
        if on {
            let g = self.groups.entry(group.to_string()).or_default();
            return !std::mem::replace(&mut g.perl, true);
        }
        let Some(g) = self.groups.get_mut(group) else { return false };
        let was = std::mem::replace(&mut g.perl, false);
        if g.members.is_empty() {
            self.groups.remove(group);
        }
        was
    }

    /// Local stream members of `group`.
    pub fn count(&self, group: &str) -> usize {
        self.groups.get(group).map_or(0, |g| g.members.len())
    }

    /// Someone here (a stream or Perl) wants the messages of `group`.
    pub fn interested(&self, group: &str) -> bool {
        self.groups.contains_key(group)
    }

    /// Queues `message` for every member of `group` but `exclude`, each
    /// encoding made once and shared. A member whose connection has more
    /// than `max_buffered` bytes unwritten gets nothing: with `Skip` it is
    /// counted and left alone, with `Drop` it is told to end (`GroupDrop`).
    /// Members never wait for each other: queuing is a push onto an inbox.
    pub fn publish(&self, group: &str, message: &GroupMessage, exclude: Option<Id>, policy: GroupOverflow, max_buffered: usize) -> Fanout {
        let mut out = Fanout::default();
        let Some(g) = self.groups.get(group) else { return out };
        out.perl = g.perl;
        let (mut ws, mut sse) = (None::<Bytes>, None::<Bytes>);
        for (&id, m) in &g.members {
            if Some(id) == exclude {
                continue;
            }
            if m.counters.buffered.load(Ordering::Acquire) > max_buffered {
                match policy {
                    GroupOverflow::Skip => out.skipped += 1,
                    GroupOverflow::Drop => {
                        m.inbox.send((id, Action::GroupDrop));
                        out.dropped.push(id);
                    }
                }
                continue;
            }
            let frame = if m.sse {
                sse.get_or_insert_with(|| encode_sse(message)).clone()
            } else {
                ws.get_or_insert_with(|| encode_ws(message)).clone()
            };
            // Counted like the app's own sends, so the member's writer
            // accounts for it and the next publish sees it unwritten.
            m.counters.add_buffered(frame.len());
            out.backlog |= m.counters.buffered.load(Ordering::Acquire) > max_buffered / 2;
            m.inbox.send((id, Action::Group { frame }));
            out.delivered += 1;
        }
        out
    }
}

/// A message as one unmasked, unfragmented WebSocket data frame.
pub fn encode_ws(message: &GroupMessage) -> Bytes {
    let mut out = BytesMut::with_capacity(message.data.len() + 10);
    crate::ws::session::put_data_frame_header(&mut out, message.text, message.data.len());
    out.put_slice(&message.data);
    out.freeze()
}

/// A message as one SSE event: its data is the text, or the bytes read as
/// UTF-8 (invalid sequences replaced).
pub fn encode_sse(message: &GroupMessage) -> Bytes {
    let data = String::from_utf8_lossy(&message.data);
    crate::sse::frame_event(message.event.as_deref(), &data, message.id.as_deref(), message.retry)
        // Fields were checked when the message was published or decoded.
        .unwrap_or_else(|_| crate::sse::frame_event(None, &data, None, message.retry).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(sse: bool) -> (Rc<Inbox>, Arc<ConnCounters>, impl FnOnce() -> Member) {
        let inbox = Inbox::new();
        let counters = Arc::new(ConnCounters::default());
        let (i, c) = (inbox.clone(), counters.clone());
        (inbox, counters, move || Member { inbox: i, counters: c, sse })
    }

    fn frames(inbox: &Inbox) -> Vec<Bytes> {
        let mut v = Vec::new();
        while let Some((_, a)) = inbox.try_recv() {
            match a {
                Action::Group { frame } => v.push(frame),
                Action::GroupDrop => v.push(Bytes::from_static(b"DROP")),
                _ => {}
            }
        }
        v
    }

    #[test]
    fn members_join_leave_and_leave_everything_when_they_end() {
        let mut r = Registry::default();
        let (_, _, m1) = member(false);
        let (_, _, m2) = member(true);
        assert_eq!(r.join(1, "a", m1), Some(1));
        assert_eq!(r.join(1, "a", || unreachable!()), None, "idempotent");
        assert_eq!(r.join(1, "b", || unreachable!()), Some(1));
        assert_eq!(r.join(2, "a", m2), Some(2));
        assert_eq!(r.count("a"), 2);
        assert_eq!(r.leave(2, "a"), Some(1));
        assert_eq!(r.leave(2, "a"), None);
        assert!(!r.has_member(2));
        let mut left = r.leave_all(1);
        left.sort();
        assert_eq!(left, [("a".to_string(), 0), ("b".to_string(), 0)]);
        assert!(!r.interested("a") && !r.interested("b"), "empty groups are forgotten");
        assert!(r.set_perl("a", true));
        assert!(r.interested("a") && r.count("a") == 0);
        assert!(r.set_perl("a", false) && !r.interested("a"));
    }

    #[test]
    fn one_encoding_per_protocol_reaches_every_member_but_the_excluded() {
        let mut r = Registry::default();
        let (w1, c1, m1) = member(false);
        let (w2, _, m2) = member(false);
        let (s1, _, m3) = member(true);
        r.join(1, "g", m1);
        r.join(2, "g", m2);
        r.join(3, "g", m3);
        let msg = GroupMessage { text: true, data: Bytes::from_static(b"hi"), event: Some("chat".into()), id: Some("9".into()), retry: None };
        let f = r.publish("g", &msg, Some(2), GroupOverflow::Drop, 1 << 20);
        assert_eq!((f.delivered, f.skipped, f.dropped.len(), f.perl), (2, 0, 0, false));
        let ws = frames(&w1);
        assert_eq!(ws, [Bytes::from_static(b"\x81\x02hi")]);
        assert_eq!(c1.buffered.load(Ordering::Relaxed), 4, "queued bytes count as unwritten");
        assert!(frames(&w2).is_empty(), "excluded");
        assert_eq!(frames(&s1), [Bytes::from_static(b"event: chat\ndata: hi\nid: 9\n\n")]);
        let bin = GroupMessage { data: Bytes::from_static(b"\x01"), ..Default::default() };
        assert_eq!(encode_ws(&bin), Bytes::from_static(b"\x82\x01\x01"));
    }

    #[test]
    fn slow_members_are_skipped_or_dropped_without_touching_the_others() {
        let mut r = Registry::default();
        let (fast, _, m1) = member(false);
        let (slow, slow_c, m2) = member(false);
        r.join(1, "g", m1);
        r.join(2, "g", m2);
        slow_c.add_buffered(100);
        let msg = GroupMessage { data: Bytes::from_static(b"x"), ..Default::default() };
        let f = r.publish("g", &msg, None, GroupOverflow::Skip, 99);
        assert_eq!((f.delivered, f.skipped), (1, 1));
        assert!(frames(&slow).is_empty());
        let f = r.publish("g", &msg, None, GroupOverflow::Drop, 99);
        assert_eq!((f.delivered, f.dropped), (1, vec![2]));
        assert_eq!(frames(&slow), [Bytes::from_static(b"DROP")]);
        assert_eq!(frames(&fast).len(), 2);
    }

    #[test]
    fn a_member_past_half_the_bound_is_reported_as_a_backlog() {
        let mut r = Registry::default();
        let (_, c, m) = member(false);
        r.join(1, "g", m);
        let msg = GroupMessage { data: Bytes::from(vec![b'x'; 40]), ..Default::default() };
        assert!(!r.publish("g", &msg, None, GroupOverflow::Drop, 100).backlog, "42 of 100 bytes");
        assert!(r.publish("g", &msg, None, GroupOverflow::Drop, 100).backlog, "84 of 100 bytes");
        c.buffered.store(0, Ordering::Relaxed);    // its writer ran
        assert!(!r.publish("g", &msg, None, GroupOverflow::Drop, 100).backlog);
    }
}
