//! The IO thread: a tokio `current_thread` runtime that runs the accept
//! loops and the command dispatcher, and carries out shutdown in phases
//! (running, draining, closing).

use crate::seam::event::Event;
use crate::server::accept::{self, StdListener};
use crate::server::ctx::{IoCtx, Phase, Shared};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::{watch, Notify};

/// Runs the IO thread until shutdown completes; a panic becomes a `fatal` event.
pub fn run_thread(shared: Arc<Shared>, listeners: Vec<StdListener>) {
    let result = catch_unwind(AssertUnwindSafe(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, io_main(shared.clone(), listeners));
    }));
    match result {
        Ok(()) => shared.events.push(Event::Stopped),
        Err(panic) => shared.events.push(Event::Fatal { message: format!("IO thread panicked: {}", panic_message(&*panic)) }),
    }
}

/// Runs a task the engine cannot work without; a panic in it becomes a
/// `fatal` event, so Perl stops instead of waiting for events that will
/// never come.
async fn fatal_on_panic(shared: Arc<Shared>, what: &'static str, task: impl Future<Output = ()>) {
    if let Err(panic) = CatchUnwind(Box::pin(task)).await {
        shared.events.push(Event::Fatal { message: format!("{what} panicked: {}", panic_message(&*panic)) });
    }
}

/// Text of a panic payload.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

async fn io_main(shared: Arc<Shared>, listeners: Vec<StdListener>) {
    if shared.test_panic.as_deref() == Some("io_thread") {
        panic!("test panic in the IO thread (PAGI_NATIVE_TEST_PANIC=io_thread)");
    }
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let ctx = Rc::new(IoCtx {
        shared: shared.clone(),
        registry: RefCell::new(HashMap::new()),
        groups: RefCell::new(Default::default()),
        phase: phase_rx,
        live: Cell::new(0),
        accepting: Cell::new(0),
        all_closed: Notify::new(),
        lazy_events: Notify::new(),
        lazy_armed: Cell::new(false),
        bridge: RefCell::new(None),
        group_backlog: Rc::new(Cell::new(false)),
    });
    crate::pubsub::start_bridge(&ctx);
    serve(&ctx, listeners, phase_tx).await;
    crate::pubsub::stop_bridge(&ctx).await;
}

/// Runs the accept loops and the dispatcher, then the shutdown phases, until
/// every connection is closed.
async fn serve(ctx: &Rc<IoCtx>, listeners: Vec<StdListener>, phase_tx: watch::Sender<Phase>) {
    let shared = &ctx.shared;
    crate::pubsub::await_bridge(ctx).await;
    tokio::task::spawn_local(crate::server::ctx::lazy_waker(ctx.clone()));
    tokio::task::spawn_local(crate::server::ctx::trim_after_activity(ctx.clone()));
    for l in listeners {
        match l.into_tokio() {
            Ok(l) => {
                ctx.accepting.set(ctx.accepting.get() + 1);
                tokio::task::spawn_local(fatal_on_panic(shared.clone(), "an accept loop", accept::accept_loop(ctx.clone(), l)));
            }
            Err(e) => shared.events.push(Event::Log { level: "error", message: format!("cannot watch listener: {e}") }),
        }
    }
    // The dispatcher keeps routing during the drain: in-flight requests still
    // need their responses. It publishes the shutdown deadline; a later
    // shutdown with a shorter grace (DESTROY uses 0) brings it forward.
    let (deadline_tx, mut deadline_rx) = watch::channel(None::<tokio::time::Instant>);
    tokio::task::spawn_local(fatal_on_panic(shared.clone(), "the command dispatcher", crate::server::dispatch::dispatch(ctx.clone(), deadline_tx)));
    // A dispatcher that died (panicked) can deliver no shutdown command: the
    // engine then closes at once instead of waiting for one for ever.
    let mut dispatcher_alive = deadline_rx.wait_for(|d| d.is_some()).await.is_ok();
    let _ = phase_tx.send(Phase::Draining);
    loop {
        if ctx.live.get() == 0 && ctx.accepting.get() == 0 {
            return;
        }
        let deadline = deadline_rx.borrow().unwrap_or_else(tokio::time::Instant::now);
        tokio::select! {
            _ = ctx.all_closed.notified() => {}
            r = deadline_rx.changed(), if dispatcher_alive => dispatcher_alive = r.is_ok(),
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    let _ = phase_tx.send(Phase::Closing);
    // Accept loops have ended by now (one that panicked never will: not waited for).
    while ctx.live.get() > 0 {
        ctx.all_closed.notified().await;
    }
}


/// Polls a future, turning a panic into `Err` so one connection cannot take the thread down.
pub struct CatchUnwind<F>(pub Pin<Box<F>>);

impl<F: Future<Output = ()>> Future for CatchUnwind<F> {
    type Output = Result<(), Box<dyn std::any::Any + Send>>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = self.0.as_mut();
        match catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(())) => Poll::Ready(Ok(())),
            Err(p) => Poll::Ready(Err(p)),
        }
    }
}
