//! The parking lot: where idle plain HTTP/1 connections wait for their
//! next request as bare sockets, with no task, no tokio registration and
//! no buffer each.
//!
//! A connection parked in its own task (as a TLS one still is, since its
//! session lives there) costs its task (about 1.3 KB), tokio's socket
//! registration (256 bytes) and the connection's details, for as long as
//! the client keeps it open. nginx keeps an idle keep-alive connection in
//! about 0.6 KB and HAProxy in about 1.2 KB (`bench/gateway-scale.sh`).
//! Here a parked connection is one slot of a slab (the socket, its
//! deadline, and what resumes it: under 100 bytes) and one entry of a
//! deadline heap, watched by one thread per listener with its own
//! `mio::Poll`.
//!
//! The lot's thread:
//! - **resumes** a connection whose socket became readable with bytes
//!   waiting ([`Resume::resume`], which starts a new task to serve it);
//! - **closes** one whose client closed it or whose socket failed, without
//!   starting anything (peeking tells these apart);
//! - **closes** one at its idle deadline, or at the last-call deadline once
//!   the server is stopping ([`Lot::last_call`]);
//! - ends, closing what is still parked, at [`Lot::close`] or when the
//!   `Lot` is dropped.
//!
//! Closing a parked connection is dropping its socket and its [`Resume`]
//! value, whose `Drop` does the server's bookkeeping (counters, the drain's
//! task tracker).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use tracing::{debug, warn};

/// Serves a parked connection again.
pub(super) trait Resume: Send + 'static {
    /// The client has sent bytes on `socket` (non-blocking, not yet read):
    /// serve them. Called on the lot's thread, so it should only start the
    /// work elsewhere.
    fn resume(self, socket: std::net::TcpStream);
}

/// The waker's token; slab keys are the other tokens.
const WAKER: Token = Token(usize::MAX);

/// Longest the lot's thread sleeps with nothing due (it is woken for new
/// work; this only bounds the damage of a missed wake).
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// Events taken per poll.
const EVENTS: usize = 1024;

/// The handle the server keeps: parks connections, announces shutdown,
/// and ends the thread when closed or dropped.
pub(super) struct Lot<R: Resume> {
    inbox: Arc<Inbox<R>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// What the server hands the lot's thread.
struct Inbox<R> {
    orders: Mutex<Orders<R>>,
    waker: Waker,
}

struct Orders<R> {
    arrivals: Vec<Arrival<R>>,
    /// The server is stopping: close what is parked at this instant.
    last_call: Option<Instant>,
    closed: bool,
}

struct Arrival<R> {
    socket: std::net::TcpStream,
    idle_until: Instant,
    resume: R,
}

impl<R: Resume> Lot<R> {
    /// Start a lot and its thread (named `name`).
    pub(super) fn start(name: &str) -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let inbox = Arc::new(Inbox {
            orders: Mutex::new(Orders {
                arrivals: Vec::new(),
                last_call: None,
                closed: false,
            }),
            waker,
        });
        let thread = std::thread::Builder::new().name(name.to_owned()).spawn({
            let inbox = inbox.clone();
            move || Attendant::new(poll, inbox).run()
        })?;
        Ok(Lot {
            inbox,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Park `socket` (non-blocking, idle, nothing unread) until its client
    /// sends again, at most until `idle_until`. After [`Lot::close`] it is
    /// closed at once.
    pub(super) fn park(&self, socket: std::net::TcpStream, idle_until: Instant, resume: R) {
        let arrival = Arrival {
            socket,
            idle_until,
            resume,
        };
        let mut orders = self.inbox.orders();
        if orders.closed {
            return;
        }
        let first = orders.arrivals.is_empty();
        orders.arrivals.push(arrival);
        drop(orders);
        if first {
            self.inbox.wake();
        }
    }

    /// The server is stopping: close every connection still parked at
    /// `until`, and give any parked from now on no longer than that.
    pub(super) fn last_call(&self, until: Instant) {
        let mut orders = self.inbox.orders();
        orders.last_call = Some(orders.last_call.map_or(until, |at| at.min(until)));
        drop(orders);
        self.inbox.wake();
    }

    /// Close every parked connection and end the thread (waiting for it,
    /// unless this is that thread: a connection it drops may hold the last
    /// handle of this lot).
    pub(super) fn close(&self) {
        self.inbox.orders().closed = true;
        self.inbox.wake();
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(thread) = thread
            && thread.thread().id() != std::thread::current().id()
            && thread.join().is_err()
        {
            warn!("the parking lot's thread panicked");
        }
    }
}

impl<R: Resume> Drop for Lot<R> {
    fn drop(&mut self) {
        self.close();
    }
}

impl<R> Inbox<R> {
    fn orders(&self) -> MutexGuard<'_, Orders<R>> {
        // Nothing panics while holding it; a poisoned lock's orders are whole.
        self.orders
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wake(&self) {
        if let Err(e) = self.waker.wake() {
            warn!(error = %e, "cannot wake the parking lot's thread");
        }
    }
}

/// One parked connection.
struct Space<R> {
    socket: TcpStream,
    idle_until: Instant,
    resume: R,
}

/// The lot's thread: owns the parked connections.
struct Attendant<R> {
    poll: Poll,
    inbox: Arc<Inbox<R>>,
    spaces: Slab<Space<R>>,
    /// (idle deadline, slab key), soonest first. An entry whose slot is
    /// empty or parked with another deadline is stale (that parking ended);
    /// stale entries are dropped as they come to the top, and all at once
    /// when they outnumber the live ones.
    deadlines: BinaryHeap<Reverse<(Instant, usize)>>,
    last_call: Option<Instant>,
}

impl<R: Resume> Attendant<R> {
    fn new(poll: Poll, inbox: Arc<Inbox<R>>) -> Self {
        Attendant {
            poll,
            inbox,
            spaces: Slab::new(),
            deadlines: BinaryHeap::new(),
            last_call: None,
        }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(EVENTS);
        loop {
            let timeout = self.next_deadline().map_or(MAX_SLEEP, |at| {
                at.saturating_duration_since(Instant::now()).min(MAX_SLEEP)
            });
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    // Not expected of epoll; go on rather than strand the connections.
                    warn!(error = %e, "the parking lot cannot poll; retrying");
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            for event in &events {
                if event.token() == WAKER {
                    if !self.take_orders() {
                        return;
                    }
                } else {
                    self.check(event.token().0);
                }
            }
            self.expire(Instant::now());
        }
    }

    /// Park the arrivals and note the last call; false once closed.
    fn take_orders(&mut self) -> bool {
        let mut orders = self.inbox.orders();
        if orders.closed {
            return false;
        }
        let arrivals = std::mem::take(&mut orders.arrivals);
        if let Some(at) = orders.last_call {
            self.last_call = Some(at);
        }
        drop(orders);
        for arrival in arrivals {
            self.settle(arrival);
        }
        true
    }

    fn settle(&mut self, arrival: Arrival<R>) {
        let Arrival {
            socket,
            idle_until,
            resume,
        } = arrival;
        let mut socket = TcpStream::from_std(socket);
        let entry = self.spaces.vacant_entry();
        let key = entry.key();
        // Edge-triggered: a request that arrived before this is reported
        // at once (epoll checks readiness when a socket is added).
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut socket, Token(key), Interest::READABLE)
        {
            debug!(error = %e, "cannot watch an idle connection; closing it");
            return;
        }
        entry.insert(Space {
            socket,
            idle_until,
            resume,
        });
        if self.deadlines.len() >= 2 * self.spaces.len() + 64 {
            self.deadlines = self
                .spaces
                .iter()
                .map(|(key, space)| Reverse((space.idle_until, key)))
                .collect();
        } else {
            self.deadlines.push(Reverse((idle_until, key)));
        }
    }

    /// Whether the heap entry (`at`, `key`) is the deadline of a parking
    /// still in the lot.
    fn is_current(&self, at: Instant, key: usize) -> bool {
        self.spaces
            .get(key)
            .is_some_and(|space| space.idle_until == at)
    }

    /// The socket of slot `key` is readable: a request, a close or an error.
    fn check(&mut self, key: usize) {
        let Some(space) = self.spaces.get(key) else {
            return;
        };
        let mut probe = [0u8; 1];
        match space.socket.peek(&mut probe) {
            Ok(0) => {
                self.leave(key);
            }
            Ok(_) => {
                let Space { socket, resume, .. } = self.leave(key);
                resume.resume(socket.into());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => self.check(key),
            Err(e) => {
                debug!(error = %e, "an idle connection failed; closing it");
                self.leave(key);
            }
        }
    }

    /// Take slot `key` out of the lot (dropping the result closes it).
    fn leave(&mut self, key: usize) -> Space<R> {
        let mut space = self.spaces.remove(key);
        if let Err(e) = self.poll.registry().deregister(&mut space.socket) {
            debug!(error = %e, "cannot stop watching an idle connection");
        }
        space
    }

    /// Close what is due at `now`: idle deadlines passed, everything at the
    /// last call.
    fn expire(&mut self, now: Instant) {
        if self.last_call.is_some_and(|at| at <= now) {
            let keys: Vec<usize> = self.spaces.iter().map(|(key, _)| key).collect();
            for key in keys {
                self.leave(key);
            }
            self.deadlines.clear();
            return;
        }
        while let Some(&Reverse((at, key))) = self.deadlines.peek() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            if self.is_current(at, key) {
                self.leave(key);
            }
        }
    }

    /// The soonest moment something may be due.
    fn next_deadline(&mut self) -> Option<Instant> {
        // Drop stale heads so a long-gone parking does not wake the thread.
        while let Some(&Reverse((at, key))) = self.deadlines.peek() {
            if self.is_current(at, key) {
                break;
            }
            self.deadlines.pop();
        }
        let idle = self.deadlines.peek().map(|Reverse((at, _))| *at);
        let last_call = self.last_call.filter(|_| !self.spaces.is_empty());
        match (idle, last_call) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Real sockets on loopback. The attendant's decisions are tested by
    //! calling it directly with instants of the test's choosing (the lot
    //! runs on real time, which cannot be paused); the thread, by waiting
    //! for what it does.

    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream as StdStream};
    use std::sync::mpsc;

    use super::*;

    /// What became of a parked connection.
    #[derive(Debug, PartialEq, Eq)]
    enum Fate {
        Resumed(Vec<u8>),
        Closed,
    }

    /// Reports its connection's fate on a channel.
    struct Probe {
        fate: mpsc::Sender<Fate>,
        resumed: bool,
    }

    impl Probe {
        /// A probe, and where it tells its connection's fate.
        fn new() -> (Probe, mpsc::Receiver<Fate>) {
            let (fate, told) = mpsc::channel();
            let probe = Probe {
                fate,
                resumed: false,
            };
            (probe, told)
        }
    }

    impl Resume for Probe {
        fn resume(mut self, mut socket: std::net::TcpStream) {
            self.resumed = true;
            let mut bytes = vec![0u8; 64];
            let n = socket.read(&mut bytes).expect("the waiting bytes");
            bytes.truncate(n);
            self.fate.send(Fate::Resumed(bytes)).unwrap();
        }
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            if !self.resumed {
                let _ = self.fate.send(Fate::Closed);
            }
        }
    }

    /// A connected pair: the client's end, and the server's (non-blocking).
    fn pair(listener: &TcpListener) -> (StdStream, StdStream) {
        let client = StdStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (client, server)
    }

    fn arrival(socket: StdStream, idle_until: Instant) -> (Arrival<Probe>, mpsc::Receiver<Fate>) {
        let (resume, told) = Probe::new();
        let arrival = Arrival {
            socket,
            idle_until,
            resume,
        };
        (arrival, told)
    }

    fn attendant() -> Attendant<Probe> {
        let poll = Poll::new().unwrap();
        let waker = Waker::new(poll.registry(), WAKER).unwrap();
        let inbox = Arc::new(Inbox {
            orders: Mutex::new(Orders {
                arrivals: Vec::new(),
                last_call: None,
                closed: false,
            }),
            waker,
        });
        Attendant::new(poll, inbox)
    }

    fn localhost() -> TcpListener {
        TcpListener::bind("127.0.0.1:0").unwrap()
    }

    #[tokio::test]
    async fn a_request_resumes_its_connection_with_the_bytes_unread_and_a_close_only_closes() {
        let listener = localhost();
        let mut lot = attendant();
        let far = Instant::now() + Duration::from_secs(60);
        let (mut asking, server) = pair(&listener);
        let (first, first_told) = arrival(server, far);
        lot.settle(first);
        let (leaving, server) = pair(&listener);
        let (second, second_told) = arrival(server, far);
        lot.settle(second);

        // Nothing to read yet (a spurious wake): both stay.
        lot.check(0);
        lot.check(1);
        assert_eq!(lot.spaces.len(), 2);

        asking.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        drop(leaving);
        // Loopback delivers at once, but the close needs the peer's FIN: wait for both.
        crate::testing::poll("the data and the close arrive", async || {
            lot.check(0);
            lot.check(1);
            match lot.spaces.len() {
                0 => Ok(()),
                n => Err(format!("{n} still parked")),
            }
        })
        .await;
        assert_eq!(
            first_told.try_recv().unwrap(),
            Fate::Resumed(b"GET / HTTP/1.1\r\n".to_vec())
        );
        assert_eq!(second_told.try_recv().unwrap(), Fate::Closed);
    }

    #[test]
    fn a_connection_is_closed_at_its_own_deadline_not_at_an_earlier_parking_s() {
        let listener = localhost();
        let mut lot = attendant();
        let now = Instant::now();
        let (_client, server) = pair(&listener);
        let (early, early_told) = arrival(server, now + Duration::from_secs(1));
        lot.settle(early);
        // That parking ends (its slot is free again) and another takes the
        // same slot with a later deadline: the first deadline is stale.
        drop(lot.leave(0));
        assert_eq!(early_told.try_recv().unwrap(), Fate::Closed);
        let (_client, server) = pair(&listener);
        let (late, late_told) = arrival(server, now + Duration::from_secs(10));
        lot.settle(late);
        assert_eq!(lot.next_deadline(), Some(now + Duration::from_secs(10)));

        lot.expire(now + Duration::from_secs(2));
        assert_eq!(lot.spaces.len(), 1, "closed at another parking's deadline");
        lot.expire(now + Duration::from_secs(10));
        assert!(lot.spaces.is_empty());
        assert_eq!(late_told.try_recv().unwrap(), Fate::Closed);
    }

    #[test]
    fn the_last_call_closes_everything_parked_at_its_instant() {
        let listener = localhost();
        let mut lot = attendant();
        let now = Instant::now();
        let mut told = Vec::new();
        for _ in 0..3 {
            let (client, server) = pair(&listener);
            let (parked, fate) = arrival(server, now + Duration::from_secs(60));
            lot.settle(parked);
            told.push((client, fate));
        }
        lot.last_call = Some(now + Duration::from_secs(1));
        assert_eq!(lot.next_deadline(), Some(now + Duration::from_secs(1)));
        lot.expire(now + Duration::from_millis(999));
        assert_eq!(lot.spaces.len(), 3);
        lot.expire(now + Duration::from_secs(1));
        assert!(lot.spaces.is_empty());
        for (mut client, fate) in told {
            assert_eq!(fate.try_recv().unwrap(), Fate::Closed);
            let mut rest = [0u8; 1];
            assert_eq!(client.read(&mut rest).unwrap(), 0, "closed");
        }
        assert_eq!(lot.next_deadline(), None, "nothing parked, nothing due");
    }

    #[test]
    fn stale_deadlines_do_not_pile_up_while_connections_come_and_go() {
        let listener = localhost();
        let mut lot = attendant();
        let far = Instant::now() + Duration::from_secs(60);
        let (_client, server) = pair(&listener);
        let (stays, _stays_told) = arrival(server, far);
        lot.settle(stays);
        let (_client, mut socket) = pair(&listener);
        for round in 0..1_000u32 {
            let (parked, _told) = arrival(socket, far + Duration::from_millis(u64::from(round)));
            lot.settle(parked);
            let Space { socket: back, .. } = lot.leave(1);
            socket = back.into();
        }
        assert!(
            lot.deadlines.len() <= 2 * lot.spaces.len() + 64,
            "{} deadlines kept for {} parked connections",
            lot.deadlines.len(),
            lot.spaces.len()
        );
    }

    #[test]
    fn the_thread_resumes_a_connection_when_its_client_writes_and_closes_the_rest_at_close() {
        let listener = localhost();
        let lot = Lot::start("lot-test").unwrap();
        let far = Instant::now() + Duration::from_secs(60);
        let (mut asking, server) = pair(&listener);
        let (probe, asking_told) = Probe::new();
        lot.park(server, far, probe);
        let (mut quiet, server) = pair(&listener);
        let (probe, quiet_told) = Probe::new();
        lot.park(server, far, probe);

        asking.write_all(b"GET").unwrap();
        assert_eq!(
            asking_told.recv_timeout(Duration::from_secs(5)).unwrap(),
            Fate::Resumed(b"GET".to_vec())
        );
        lot.close();
        assert_eq!(
            quiet_told.recv_timeout(Duration::from_secs(5)).unwrap(),
            Fate::Closed
        );
        let mut rest = [0u8; 1];
        assert_eq!(quiet.read(&mut rest).unwrap(), 0, "closed by the lot");

        // Parked after the close: closed at once.
        let (_client, server) = pair(&listener);
        let (probe, late_told) = Probe::new();
        lot.park(server, far, probe);
        assert_eq!(late_told.try_recv().unwrap(), Fate::Closed);
    }
}
