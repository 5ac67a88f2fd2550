//! The IO thread's shared context: engine-wide state both threads see
//! ([`Shared`]), the engine's phase, and the id -> stream registry. It
//! knows no protocol: streams register an [`ActionSender`] under their id.

use crate::config::Config;
use crate::seam::event::{Action, Command, Id};
use crate::seam::queue::EventQueue;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use tokio::sync::{watch, Notify};

/// Commands for one stream: (request id, action).
pub type ActionSender = Rc<Inbox>;

/// A stream's command queue on the IO thread. A tokio channel would do, but
/// it allocates a block of slots up front that an idle keep-alive
/// connection would hold for nothing; this holds memory only while
/// commands wait.
#[derive(Default)]
pub struct Inbox {
    queue: RefCell<VecDeque<(Id, Action)>>,
    ready: Notify,
    /// The stream's plain socket while the stream waits with no output of
    /// its own unwritten: a group fan-out may then write a frame to it
    /// directly instead of waking the stream (see `crate::pubsub::groups`).
    /// The stream clears it before it queues output itself and before its
    /// socket closes, so a direct frame can neither overtake the stream's
    /// own bytes nor reach a descriptor reused by another connection.
    direct: Cell<Option<DirectSocket>>,
    /// A direct write happened since the stream last looked (see [`Inbox::take_wrote_directly`]).
    wrote_directly: Cell<bool>,
}

/// A socket offered for direct group writes, and how its bytes are framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectSocket {
    pub fd: std::os::fd::RawFd,
    /// The stream is an HTTP/1.1 chunked body: each frame goes in a chunk.
    pub chunked: bool,
}

impl Inbox {
    pub fn new() -> Rc<Self> {
        Rc::new(Self::default())
    }

    /// Queues a command and wakes the stream.
    pub fn send(&self, item: (Id, Action)) {
        self.queue.borrow_mut().push_back(item);
        self.ready.notify_one();
    }

    /// Offers (`Some`) or withdraws (`None`) the stream's socket for direct group writes.
    pub fn set_direct(&self, socket: Option<DirectSocket>) {
        self.direct.set(socket);
    }

    /// The socket a group frame may be written to now: offered by the
    /// stream, and no command waits here (a frame must not overtake one).
    pub fn direct(&self) -> Option<DirectSocket> {
        self.direct.get().filter(|_| self.queue.borrow().is_empty())
    }

    /// Records that bytes reached the socket without the stream: its
    /// timers that measure progress must count them.
    pub fn note_direct_write(&self) {
        self.wrote_directly.set(true);
    }

    /// True once after bytes were written directly since the last call.
    pub fn take_wrote_directly(&self) -> bool {
        self.wrote_directly.replace(false)
    }

    /// The next command, without waiting.
    pub fn try_recv(&self) -> Option<(Id, Action)> {
        self.queue.borrow_mut().pop_front()
    }

    /// The next command. Cancel-safe: the command stays queued until this
    /// returns it, so a `select!` that drops the future loses nothing.
    pub async fn recv(&self) -> (Id, Action) {
        loop {
            if let Some(item) = self.try_recv() {
                return item;
            }
            self.ready.notified().await;
        }
    }

    /// Frees the queue's memory once it is empty (between requests).
    pub fn release_idle(&self) {
        let mut q = self.queue.borrow_mut();
        if q.is_empty() && q.capacity() > 0 {
            *q = VecDeque::new();
        }
    }
}

/// Withdraws a stream's socket from direct group writes when dropped, so
/// however a stream's loop ends, it does so before the socket can close.
pub struct WithdrawDirect<'a>(pub &'a Inbox);

impl Drop for WithdrawDirect<'_> {
    fn drop(&mut self) {
        self.0.set_direct(None);
    }
}

/// Counters readable from Perl at any time.
#[derive(Default, Debug)]
pub struct Stats {
    pub connections_active: AtomicU64,
    pub connections_total: AtomicU64,
    pub requests_total: AtomicU64,
    pub groups: crate::pubsub::GroupStats,
}

/// State shared by the Perl thread and the IO thread.
pub struct Shared {
    pub config: Config,
    pub events: EventQueue,
    /// Commands flushed by Perl, taken by the dispatcher in one go.
    pub commands: Mutex<Vec<Command>>,
    /// Wakes the dispatcher once per flushed batch.
    pub command_wake: Notify,
    pub next_id: AtomicU64,
    pub stats: Stats,
    /// Test-only switch (`PAGI_NATIVE_TEST_PANIC`), read once at `new`.
    pub test_panic: Option<String>,
    /// TLS configuration, built at `start` when a listener asked for TLS.
    pub tls: Option<crate::server::tls::Tls>,
}

/// Where the engine is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// Not accepting; idle connections close, requests in flight finish.
    Draining,
    /// Grace is over: every connection closes now.
    Closing,
}


/// IO-thread-only context handed to every task.
pub struct IoCtx {
    pub shared: Arc<Shared>,
    /// Request id → the stream serving it.
    pub registry: RefCell<HashMap<Id, ActionSender>>,
    /// Group memberships (see `crate::pubsub`).
    pub groups: RefCell<crate::pubsub::groups::Registry>,
    pub phase: watch::Receiver<Phase>,
    /// Connections alive (TLS handshakes in progress included).
    pub live: Cell<usize>,
    /// Accept loops still running; the drain waits for them to hand over
    /// the connections queued before shutdown.
    pub accepting: Cell<usize>,
    pub all_closed: Notify,
    /// Poked after a lazy event was queued; see [`IoCtx::push_lazy`].
    pub lazy_events: Notify,
    /// The lazy waker's timer runs: lazy events queued meanwhile share it.
    pub lazy_armed: Cell<bool>,
    /// The Redis bridge when the `pubsub` option is set (see `crate::pubsub`).
    pub bridge: RefCell<Option<Rc<crate::pubsub::redis::Bridge>>>,
    /// Set by a group fan-out that left a member with a backlog
    /// ([`crate::pubsub::groups::Fanout::backlog`]); whoever fans out the
    /// next message (the command dispatcher, the Redis bridge) takes it and
    /// yields first, so the members' writers run.
    pub group_backlog: Rc<Cell<bool>>,
}

/// Stream `id` is over: it leaves the registry and every group it joined.
pub fn unregister(ctx: &Rc<IoCtx>, id: Id) {
    ctx.registry.borrow_mut().remove(&id);
    crate::pubsub::stream_ended(ctx, id);
}

/// How long a lazy event may wait for a wake to ride along with.
pub const LAZY_EVENT_DELAY: std::time::Duration = std::time::Duration::from_millis(1);

impl IoCtx {
    /// Queues an event Perl needs soon but not at once (a finished
    /// request): under load it joins the wake of the next request instead
    /// of costing the Perl thread a loop iteration of its own; when nothing
    /// else comes, [`lazy_waker`] wakes Perl within [`LAZY_EVENT_DELAY`].
    pub fn push_lazy(&self, event: crate::seam::event::Event) {
        self.shared.events.push_lazy(event);
        if !self.lazy_armed.replace(true) {
            self.lazy_events.notify_one();
        }
    }
}

/// How often [`trim_after_activity`] looks.
pub const TRIM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Gives freed heap memory back to the system after a period with traffic:
/// request buffers freed between long-lived allocations (the tasks of idle
/// keep-alive connections) otherwise stay resident. glibc only; a walk of
/// the heap every few seconds, and only when requests or connections came.
pub async fn trim_after_activity(ctx: Rc<IoCtx>) {
    use std::sync::atomic::Ordering::Relaxed;
    let stats = &ctx.shared.stats;
    let mut seen = (stats.requests_total.load(Relaxed), stats.connections_total.load(Relaxed));
    loop {
        tokio::time::sleep(TRIM_INTERVAL).await;
        let now = (stats.requests_total.load(Relaxed), stats.connections_total.load(Relaxed));
        if now != seen {
            seen = now;
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            // SAFETY: malloc_trim only releases free memory; any thread may call it.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }
}

/// The IO thread's task behind [`IoCtx::push_lazy`].
pub async fn lazy_waker(ctx: Rc<IoCtx>) {
    loop {
        ctx.lazy_events.notified().await;
        tokio::time::sleep(LAZY_EVENT_DELAY).await;
        ctx.lazy_armed.set(false);
        ctx.shared.events.wake_if_pending();
    }
}
