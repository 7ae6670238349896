//! Wake-ups a task sends itself while it is being polled, turned into one more turn of the same
//! poll.
//!
//! When a future wakes its own task during the task's poll (hyper's channels between a
//! connection's dispatcher and the request or response body it feeds, in the same task), tokio
//! reschedules the task as if it had yielded: another trip through the scheduler, behind every
//! other task ready on the thread (and on a multi-threaded runtime, an idle worker woken to steal
//! it: a futex call and a context switch per request for nothing). A
//! [`Gate`] polls with a waker of its own that, while the owner polls, only notes the wake-up; the
//! owner then polls again before it returns. Wake-ups from elsewhere (a socket, a timer, another
//! task) reach the task as usual.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// Turns of one poll before the task yields to the runtime all the same (so a future that keeps
/// waking itself, or a task out of its cooperative budget, does not hold the thread).
const MAX_TURNS: usize = 32;

const IDLE: u8 = 0;
const POLLING: u8 = 1;
const WOKEN: u8 = 2;

/// The waker a connection and its response are polled with. While their owner polls them, a
/// wake-up they send (hyper's channels between the connection and the response, or the socket
/// becoming ready meanwhile) is noted instead of rescheduling the task, and the owner polls
/// again; otherwise it wakes the task that last polled.
pub struct Gate {
    shared: Arc<GateShared>,
    waker: Waker,
}

struct GateShared {
    state: AtomicU8,
    task: Mutex<Option<Waker>>,
}

impl Gate {
    pub fn new() -> Gate {
        let shared = Arc::new(GateShared {
            state: AtomicU8::new(IDLE),
            task: Mutex::new(None),
        });
        let waker = Waker::from(shared.clone());
        Gate { shared, waker }
    }

    /// Forgets the task (an idle connection wakes nobody).
    pub fn park(&self) {
        *self.shared.lock() = None;
    }

    /// Runs `step` with the gate's waker until it is ready or a turn went by without a wake-up.
    pub fn drive<T>(
        &self,
        cx: &mut Context<'_>,
        mut step: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        {
            let mut task = self.shared.lock();
            match task.as_ref() {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => *task = Some(cx.waker().clone()),
            }
        }
        let mut gcx = Context::from_waker(&self.waker);
        for _ in 0..MAX_TURNS {
            self.shared.state.store(POLLING, Ordering::Release);
            if let Poll::Ready(v) = step(&mut gcx) {
                self.shared.state.store(IDLE, Ordering::Release);
                return Poll::Ready(v);
            }
            if self
                .shared
                .state
                .compare_exchange(POLLING, IDLE, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Poll::Pending;
            }
        }
        // Still busy after many turns: let the runtime run other tasks first.
        self.shared.state.store(IDLE, Ordering::Release);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl GateShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Waker>> {
        self.task.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Wake for GateShared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        match self
            .state
            .compare_exchange(POLLING, WOKEN, Ordering::AcqRel, Ordering::Acquire)
        {
            // The owner is polling: it will take another turn.
            Ok(_) => {}
            Err(WOKEN) => {}
            Err(_) => {
                if let Some(w) = self.lock().as_ref() {
                    w.wake_by_ref();
                }
            }
        }
    }
}

impl Default for Gate {
    fn default() -> Gate {
        Gate::new()
    }
}

/// A future polled through a [`Gate`] (a server connection's task: hyper's dispatcher and the
/// request's handler feed each other through channels in the same task).
pub struct Coalesced<F> {
    inner: Pin<Box<F>>,
    gate: Gate,
}

impl<F: Future> Coalesced<F> {
    pub fn new(inner: F) -> Coalesced<F> {
        Coalesced {
            inner: Box::pin(inner),
            gate: Gate::new(),
        }
    }
}

impl<F: Future> Future for Coalesced<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let inner = &mut this.inner;
        this.gate.drive(cx, |gcx| inner.as_mut().poll(gcx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts the wake-ups that reach the task.
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Ready after `turns` polls; wakes its own waker at each poll before that (as hyper's
    /// channels do between a dispatcher and the body it feeds).
    struct SelfWaking {
        turns: usize,
    }

    impl Future for SelfWaking {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.turns == 0 {
                return Poll::Ready(());
            }
            self.turns -= 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    fn poll_once<F: Future + Unpin>(f: &mut F, counter: &Arc<Counter>) -> Poll<F::Output> {
        let waker = Waker::from(counter.clone());
        Pin::new(f).poll(&mut Context::from_waker(&waker))
    }

    #[test]
    fn self_wake_ups_become_turns_of_the_same_poll() {
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        let mut f = Coalesced::new(SelfWaking { turns: 5 });
        assert!(poll_once(&mut f, &counter).is_ready());
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            0,
            "no wake-up reached the task"
        );
    }

    #[test]
    fn a_future_that_keeps_waking_itself_yields_after_max_turns() {
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        let mut f = Coalesced::new(SelfWaking {
            turns: MAX_TURNS * 2,
        });
        assert!(poll_once(&mut f, &counter).is_pending());
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            1,
            "woken once, to be polled again"
        );
        assert!(poll_once(&mut f, &counter).is_pending());
        assert!(poll_once(&mut f, &counter).is_ready());
    }

    #[test]
    fn wake_ups_from_elsewhere_reach_the_task() {
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        let (tx, rx) = tokio::sync::oneshot::channel::<u8>();
        let mut f = Coalesced::new(rx);
        assert!(poll_once(&mut f, &counter).is_pending());
        tx.send(7).unwrap();
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            1,
            "the send woke the task"
        );
        assert!(matches!(poll_once(&mut f, &counter), Poll::Ready(Ok(7))));
    }
}
