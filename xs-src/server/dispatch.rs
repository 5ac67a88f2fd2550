//! Routes Perl's command batches to the streams they name, for the
//! engine's whole life, and turns shutdown commands into the drain deadline.

use crate::seam::event::Command;
use crate::server::ctx::IoCtx;
use std::rc::Rc;
use tokio::sync::watch;

/// Routes command batches to connections for the engine's whole life and
/// turns shutdown commands into the drain deadline.
pub async fn dispatch(ctx: Rc<IoCtx>, deadline: watch::Sender<Option<tokio::time::Instant>>) {
    loop {
        ctx.shared.command_wake.notified().await;
        let batch = std::mem::take(&mut *ctx.shared.commands.lock().unwrap_or_else(|p| p.into_inner()));
        if ctx.shared.test_panic.as_deref() == Some("dispatch") {
            panic!("test panic in the command dispatcher (PAGI_NATIVE_TEST_PANIC=dispatch)");
        }
        for cmd in batch {
            match cmd {
                Command::Request { id, action } => {
                    if let Some(conn) = ctx.registry.borrow().get(&id) {
                        conn.send((id, action));
                    }
                }
                Command::Group(cmd) => {
                    crate::pubsub::command(&ctx, cmd);
                    // A publish left a member with a backlog: let the
                    // members' writers run before the batch's next publish,
                    // so a burst does not make readers that keep up look slow.
                    if ctx.group_backlog.replace(false) {
                        tokio::task::yield_now().await;
                    }
                }
                Command::Query { token, query } => crate::pubsub::query(&ctx, token, query),
                Command::Shutdown { grace } => {
                    let at = tokio::time::Instant::now() + grace;
                    deadline.send_if_modified(|d| match d {
                        Some(old) if *old <= at => false,
                        _ => {
                            *d = Some(at);
                            true
                        }
                    });
                }
            }
        }
    }
}