//! The doorbells. The deadline lane's ([`DeadlineWake`]): producers (the cron job, the
//! refresh lane, the webhook forwarder) ask for a tick, saying whether it must pull the
//! Microsoft inbox; the lane (plans, pushes, raises alerts) takes the asks, coalesced, and
//! tells waiters when a tick that began after their ask has finished. The executor's for
//! answers ([`AnswerWake`]): an answer queued by the page or the command line is sent without
//! a cycle, and its waiter learns when a row was recorded. A leaf: it knows no feature module.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, Notify};

/// A cloneable handle on one deadline lane's wake-ups.
#[derive(Debug, Clone)]
pub struct DeadlineWake {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// A stored permit: asks made while a tick runs start one more tick after it.
    notify: Notify,
    /// Some ask since the last tick began wanted the Microsoft inbox pulled.
    pull: AtomicBool,
    /// Ticks begun so far.
    begun: AtomicU64,
    /// Ticks finished so far.
    finished: watch::Sender<u64>,
}

impl Default for DeadlineWake {
    fn default() -> Self {
        DeadlineWake {
            inner: Arc::new(Inner {
                notify: Notify::new(),
                pull: AtomicBool::new(false),
                begun: AtomicU64::new(0),
                finished: watch::channel(0).0,
            }),
        }
    }
}

/// What a tick asked of the lane should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TickAsk {
    /// Pull the Microsoft inbox first (false: the work is already stored, e.g. a webhook
    /// event's referral: plan, push and alert only).
    pub(crate) pull: bool,
}

impl DeadlineWake {
    pub fn new() -> DeadlineWake {
        DeadlineWake::default()
    }

    /// Asks for a tick that pulls the inbox (the schedule, a changed record, start-up).
    pub(crate) fn ask_with_pull(&self) {
        self.inner.pull.store(true, Ordering::SeqCst);
        self.inner.notify.notify_one();
    }

    /// Asks for a tick over what is already stored ("no pull needed"); returns the tick to
    /// wait for with [`DeadlineWake::finished_after`].
    pub(crate) fn ask_without_pull(&self) -> u64 {
        // Read before notifying: the tick that serves this ask begins after this number.
        let begun = self.inner.begun.load(Ordering::SeqCst);
        self.inner.notify.notify_one();
        begun + 1
    }

    /// Waits for the next ask (the lane's side).
    pub(crate) async fn asked(&self) {
        self.inner.notify.notified().await;
    }

    /// The lane begins a tick: what the asks since the last one want.
    pub(crate) fn begin(&self) -> TickAsk {
        self.inner.begun.fetch_add(1, Ordering::SeqCst);
        TickAsk {
            pull: self.inner.pull.swap(false, Ordering::SeqCst),
        }
    }

    /// The lane finished the tick it began last.
    pub(crate) fn finish(&self) {
        self.inner.finished.send_modify(|n| *n += 1);
    }

    /// Waits until tick number `tick` (from [`DeadlineWake::ask_without_pull`]) has finished.
    pub(crate) async fn finished_after(&self, tick: u64) {
        let mut finished = self.inner.finished.subscribe();
        // The sender lives in `self`: this never errs while we hold it.
        let _ = finished.wait_for(|n| *n >= tick).await;
    }
}

/// The executor's doorbell for answers: rung when an answer is queued (the page; the
/// daemon's look for answers the command line queued), taken by the daemon's answer sender,
/// which runs the one executor for answers only (no cycle, no alert evaluation). Every row
/// the executor records moves the `recorded` count, which the page waits on.
#[derive(Debug, Clone)]
pub struct AnswerWake {
    inner: Arc<AnswerInner>,
}

#[derive(Debug)]
struct AnswerInner {
    /// A stored permit: an answer queued while the sender runs starts one more run.
    notify: Notify,
    /// Rows recorded by the executor so far.
    recorded: watch::Sender<u64>,
}

impl Default for AnswerWake {
    fn default() -> Self {
        AnswerWake {
            inner: Arc::new(AnswerInner {
                notify: Notify::new(),
                recorded: watch::channel(0).0,
            }),
        }
    }
}

impl AnswerWake {
    /// An answer was queued: send it.
    pub(crate) fn ring(&self) {
        self.inner.notify.notify_one();
    }

    /// Waits for the next ring (the sender's side).
    pub(crate) async fn rung(&self) {
        self.inner.notify.notified().await;
    }

    /// The executor recorded a row.
    pub(crate) fn recorded(&self) {
        self.inner.recorded.send_modify(|n| *n += 1);
    }

    /// How many rows were recorded so far: the number to wait [`AnswerWake::after`].
    pub(crate) fn seen(&self) -> u64 {
        *self.inner.recorded.borrow()
    }

    /// Waits until a row is recorded after `seen` was read.
    pub(crate) fn after(
        &self,
        seen: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        let mut recorded = self.inner.recorded.subscribe();
        Box::pin(async move {
            // The sender lives in `self`: this never errs while we hold it.
            let _ = recorded.wait_for(|n| *n > seen).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_ask_made_while_a_tick_runs_is_served_by_the_next_tick() {
        let wake = DeadlineWake::new();
        wake.ask_with_pull();
        wake.asked().await;
        assert_eq!(wake.begin(), TickAsk { pull: true });
        // Asked while tick 1 runs: tick 1 may have read before it, so tick 2 serves it.
        let tick = wake.ask_without_pull();
        assert_eq!(tick, 2);
        wake.finish();
        let waiter = tokio::spawn({
            let wake = wake.clone();
            async move { wake.finished_after(tick).await }
        });
        wake.asked().await;
        assert_eq!(wake.begin(), TickAsk { pull: false });
        assert!(!waiter.is_finished());
        wake.finish();
        waiter.await.unwrap();
    }

    #[tokio::test]
    async fn a_waiter_learns_of_a_row_recorded_after_it_looked() {
        let wake = AnswerWake::default();
        wake.recorded();
        let seen = wake.seen();
        let waiter = tokio::spawn({
            let wake = wake.clone();
            async move { wake.after(seen).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "nothing recorded since it looked");
        wake.recorded();
        waiter.await.unwrap();
        // A ring while nobody waits is kept for the next wait.
        wake.ring();
        wake.rung().await;
    }
}
