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
    /// Of those, members it was written to directly (no queue, no wake).
    pub direct: u64,
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
        let (mut ws, mut sse, mut chunked) = (None::<Bytes>, None::<Bytes>, None::<Bytes>);
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
            // A member parked with nothing to write gets the frame with one
            // send(2), without a wake of its stream.
            let (action, len) = match m.inbox.direct() {
                None => {
                    let len = frame.len();
                    (Action::Group { frame }, len)
                }
                Some(socket) => {
                    let wire = if socket.chunked { chunked.get_or_insert_with(|| in_chunk(&frame)).clone() } else { frame.clone() };
                    let n = write_direct(socket.fd, &wire);
                    if n == wire.len() {
                        m.inbox.note_direct_write();
                        out.delivered += 1;
                        out.direct += 1;
                        continue;
                    }
                    // The socket took less: the rest goes through the
                    // stream's writer, which must write before another
                    // direct frame may.
                    m.inbox.set_direct(None);
                    if n == 0 {
                        let len = frame.len();
                        (Action::Group { frame }, len)
                    } else {
                        m.inbox.note_direct_write();
                        (Action::GroupTail { bytes: wire.slice(n..) }, wire.len() - n)
                    }
                }
            };
            // Counted like the app's own sends, so the member's writer
            // accounts for it and the next publish sees it unwritten.
            m.counters.add_buffered(len);
            out.backlog |= m.counters.buffered.load(Ordering::Acquire) > max_buffered / 2;
            m.inbox.send((id, action));
            out.delivered += 1;
        }
        out
    }
}

/// One non-blocking send(2) of `frame` to a member's plain socket; the
/// bytes it took (0 when the socket is full or failed: the stream's own
/// writer then meets the condition and deals with it).
fn write_direct(fd: std::os::fd::RawFd, frame: &[u8]) -> usize {
    // SAFETY: `fd` is the member's open socket (its stream withdraws it
    // before closing), and `frame` is valid for `frame.len()` bytes.
    let n = unsafe { libc::send(fd, frame.as_ptr().cast(), frame.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    n.max(0) as usize
}

/// An SSE event as one HTTP/1.1 chunk, for members whose body is chunked.
fn in_chunk(event: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(event.len() + 12);
    crate::h1::encode::put_chunk_header(&mut out, event.len());
    out.put_slice(event);
    out.put_slice(b"\r\n");
    out.freeze()
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

    /// A connected pair of Unix stream sockets, non-blocking on our side.
    fn socket_pair() -> (std::os::unix::net::UnixStream, std::os::unix::net::UnixStream) {
        let (ours, peer) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        (ours, peer)
    }

    fn read_available(peer: &mut std::os::unix::net::UnixStream) -> Vec<u8> {
        use std::io::Read;
        peer.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        while let Ok(n) = peer.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    #[test]
    fn an_offered_socket_gets_the_frame_directly_and_nothing_is_queued() {
        use crate::server::ctx::DirectSocket;
        use std::os::fd::AsRawFd;
        let mut r = Registry::default();
        let (ws_inbox, ws_c, m1) = member(false);
        let (sse_inbox, _, m2) = member(true);
        r.join(1, "g", m1);
        r.join(2, "g", m2);
        let (ws_sock, mut ws_peer) = socket_pair();
        let (sse_sock, mut sse_peer) = socket_pair();
        ws_inbox.set_direct(Some(DirectSocket { fd: ws_sock.as_raw_fd(), chunked: false }));
        sse_inbox.set_direct(Some(DirectSocket { fd: sse_sock.as_raw_fd(), chunked: true }));
        let msg = GroupMessage { text: true, data: Bytes::from_static(b"hi"), ..Default::default() };
        let f = r.publish("g", &msg, None, GroupOverflow::Drop, 1 << 20);
        assert_eq!((f.delivered, f.direct), (2, 2));
        assert_eq!(read_available(&mut ws_peer), b"\x81\x02hi");
        assert_eq!(read_available(&mut sse_peer), b"a\r\ndata: hi\n\n\r\n", "an SSE event inside its chunk");
        assert!(frames(&ws_inbox).is_empty() && frames(&sse_inbox).is_empty(), "no wake, nothing queued");
        assert_eq!(ws_c.buffered.load(Ordering::Relaxed), 0, "nothing left unwritten");
        assert!(ws_inbox.take_wrote_directly() && !ws_inbox.take_wrote_directly());
    }

    #[test]
    fn a_queued_command_or_a_full_socket_sends_frames_through_the_stream() {
        use crate::server::ctx::DirectSocket;
        use std::os::fd::AsRawFd;
        let mut r = Registry::default();
        let (inbox, c, m) = member(false);
        r.join(1, "g", m);
        let (sock, mut peer) = socket_pair();
        let offer = Some(DirectSocket { fd: sock.as_raw_fd(), chunked: false });
        inbox.set_direct(offer);
        // A command of the stream's own waits: a frame must not overtake it.
        inbox.send((1, Action::WsCredit(1)));
        let msg = GroupMessage { data: Bytes::from(vec![b'x'; 100_000]), ..Default::default() };
        r.publish("g", &msg, None, GroupOverflow::Drop, 1 << 20);
        assert!(read_available(&mut peer).is_empty());
        assert_eq!(frames(&inbox).len(), 1, "queued behind the command");
        c.buffered.store(0, Ordering::Relaxed);
        // Nobody reads the peer: the socket takes part of a big frame, the
        // rest is queued as a tail and the offer is withdrawn.
        let mut sent = 0;
        let mut tail = None;
        for _ in 0..100 {
            r.publish("g", &msg, None, GroupOverflow::Drop, usize::MAX);
            if let Some((_, Action::GroupTail { bytes })) = inbox.try_recv() {
                tail = Some(bytes);
                break;
            }
            sent += 1;
        }
        let tail = tail.expect("a frame the socket could not take whole");
        assert!(inbox.direct().is_none(), "withdrawn until the stream offers again");
        assert_eq!(c.buffered.load(Ordering::Relaxed), tail.len(), "only the tail counts as unwritten");
        let frame_len = encode_ws(&msg).len();
        let got = read_available(&mut peer);
        assert_eq!(got.len() + tail.len(), (sent + 1) * frame_len, "written bytes and the tail make whole frames");
        r.publish("g", &msg, None, GroupOverflow::Drop, usize::MAX);
        assert!(matches!(inbox.try_recv(), Some((_, Action::Group { .. }))), "after a tail, frames queue");
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
