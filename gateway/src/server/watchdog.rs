//! What a connection's task watches besides hyper: the counters a
//! connection keeps ([`Activity`]: bytes read, requests started and still
//! open, unflushed output), the [`watchdog`] that judges them (slow headers,
//! idle, quiet enough to release hyper's state), and [`OnWake`], which keeps
//! polling the watchdog off the per-request path.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use super::ServerSettings;

/// Shortest watchdog tick.
const MIN_TICK: Duration = Duration::from_millis(10);
/// How long an HTTP/1 connection is quiet (no request in flight, nothing
/// arriving, everything written flushed) before hyper's state for it is
/// released; the watchdog's tick is at most half of it, so the release
/// comes 1–1.5 times this after the last request.
///
/// Short, because hyper's state is about 17 KB a connection (its two
/// buffers), and a burst of new connections holds it at once: 10,000
/// connections opened 200 at a time, one request each, had 67 MB allocated
/// at the peak with 100 ms. With mimalloc, which kept that memory until it
/// was busy again, they left 11.8 KB a connection with 500 ms and 3.2 KB
/// with 100 ms (`bench/gateway-scale.sh`, idle connections); jemalloc now
/// returns it within seconds (`main.rs`). A connection busier than
/// this never releases; one that pauses longer pays a new spell (a task
/// and hyper's connection) for its next request.
pub(super) const RELEASE_AFTER: Duration = Duration::from_millis(100);

/// A future that is polled only after its own waker fired (and once at the
/// start); polling it otherwise costs an atomic swap and a waker check.
pub(super) struct OnWake<F> {
    future: Pin<Box<F>>,
    flag: Arc<WakeFlag>,
    waker: std::task::Waker,
}

#[derive(Debug)]
struct WakeFlag {
    woken: AtomicBool,
    task: futures::task::AtomicWaker,
}

impl std::task::Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future> OnWake<F> {
    pub(super) fn new(future: F) -> Self {
        let flag = Arc::new(WakeFlag {
            woken: AtomicBool::new(true),
            task: futures::task::AtomicWaker::new(),
        });
        OnWake {
            future: Box::pin(future),
            waker: std::task::Waker::from(flag.clone()),
            flag,
        }
    }
}

impl<F: Future> Future for OnWake<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        // Registered before the flag is read, so a wake in between is not lost.
        this.flag.task.register(cx.waker());
        if !this.flag.woken.swap(false, Ordering::Acquire) {
            return Poll::Pending;
        }
        let mut inner = Context::from_waker(&this.waker);
        this.future.as_mut().poll(&mut inner)
    }
}

/// Counters one connection keeps for its watchdog.
#[derive(Debug, Default)]
pub(super) struct Activity {
    pub(super) bytes_read: AtomicU64,
    /// Requests handed to the handler.
    pub(super) started: AtomicU64,
    /// Requests whose response body has not been sent yet.
    pub(super) open: AtomicU64,
    /// Bytes were written and not flushed since.
    pub(super) unflushed: AtomicBool,
    /// The connection speaks HTTP/2.
    pub(super) h2: AtomicBool,
    /// The server is stopping: responses say `Connection: close`.
    pub(super) last_call: AtomicBool,
    /// hyper's connection is ending to hand the stream back, not to close it.
    pub(super) releasing: AtomicBool,
}

/// A request in progress on its connection, until its response body is done.
pub(super) struct Open(Arc<Activity>);

impl Open {
    pub(super) fn begin(activity: &Arc<Activity>) -> Self {
        activity.started.fetch_add(1, Ordering::Relaxed);
        activity.open.fetch_add(1, Ordering::Relaxed);
        Open(activity.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(super) enum Verdict {
    /// A request head took longer than the header read timeout: close.
    SlowHeaders,
    /// No request for the idle timeout: close gracefully.
    Idle,
    /// An HTTP/1 connection quiet for [`RELEASE_AFTER`], with nothing in
    /// flight either way: release hyper's state (quiet since `quiet_since`).
    Release { quiet_since: Instant },
}

/// Resolves when the connection should go or be released (see the module doc).
pub(super) async fn watchdog(activity: &Activity, settings: ServerSettings) -> Verdict {
    let header_timeout = settings.header_read_timeout;
    let idle = settings.idle_timeout;
    let tick = (header_timeout.min(idle) / 4)
        .min(RELEASE_AFTER / 2)
        .max(MIN_TICK);
    let mut seen_bytes = 0;
    let mut seen_started = 0;
    // Since when a request head has been arriving; a new connection owes its first request.
    let mut head_since = Some(Instant::now());
    let mut quiet_since = Instant::now();
    loop {
        tokio::time::sleep(tick).await;
        let now = Instant::now();
        let bytes = activity.bytes_read.load(Ordering::Relaxed);
        let started = activity.started.load(Ordering::Relaxed);
        let open = activity.open.load(Ordering::Relaxed);
        if started != seen_started || open > 0 {
            seen_started = started;
            seen_bytes = bytes;
            head_since = None;
            quiet_since = now;
            continue;
        }
        let h2 = activity.h2.load(Ordering::Relaxed);
        let arriving = bytes != seen_bytes;
        if h2 {
            // HTTP/2 frames between requests (pings, settings) are not heads.
            head_since = None;
        } else if arriving && head_since.is_none() {
            head_since = Some(now);
        }
        seen_bytes = bytes;
        if head_since.is_some_and(|since| now.duration_since(since) >= header_timeout) {
            return Verdict::SlowHeaders;
        }
        let quiet = now.duration_since(quiet_since);
        if quiet >= idle {
            return Verdict::Idle;
        }
        if !h2
            && head_since.is_none()
            && !arriving
            && !activity.unflushed.load(Ordering::Relaxed)
            && quiet >= RELEASE_AFTER
        {
            return Verdict::Release { quiet_since };
        }
    }
}

/// A response body that keeps its request open on the connection until sent.
pub(super) struct Tracked<B> {
    pub(super) body: B,
    pub(super) _open: Open,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
