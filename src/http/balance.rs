//! Spreading a listener's connections evenly over its HTTP threads.
//!
//! Every HTTP thread accepts from the one listener. Left to itself, the thread that wakes first
//! takes every connection waiting in the backlog: a burst of 64 keep-alive connections (a load
//! balancer's, a shield tier's, a benchmark's) often landed all on one thread, and stayed there
//! for their lives while the other cores had nothing to do. So a thread keeps a connection it
//! accepted only if it serves no more connections than any other thread of its listener; if
//! another serves fewer, the connection is handed to it, through that thread's channel, before
//! anything is read from it (Envoy's "exact" connection balance). Once served, a connection
//! stays on its thread: only new connections even out what closing ones left uneven.
//!
//! The counts are per listener and read without a lock: two threads accepting at the same
//! moment may both pick the same one, which the next connections even out. A handed
//! connection costs its new thread a wake-up; one kept costs a load of each thread's count.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::OwnedSemaphorePermit;

/// A connection accepted on one thread for another to serve.
pub(crate) struct Handed {
    pub(crate) stream: std::net::TcpStream,
    pub(crate) peer: SocketAddr,
    pub(crate) permit: OwnedSemaphorePermit,
    pub(crate) open: Open,
}

struct Thread {
    /// Connections this thread serves, and those handed to it and not yet taken.
    open: AtomicUsize,
    gauge: metrics::Gauge,
    /// Unbounded, but every connection in it holds one of the listener's connection permits.
    handoff: UnboundedSender<Handed>,
}

/// The threads of one listener and how many connections each serves.
pub(crate) struct Balance {
    threads: Box<[Thread]>,
}

/// A connection counted to a thread, until it is dropped.
pub(crate) struct Open {
    balance: Arc<Balance>,
    thread: usize,
}

impl Open {
    /// The thread it is counted to.
    pub(crate) fn thread(&self) -> usize {
        self.thread
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let t = &self.balance.threads[self.thread];
        t.open.fetch_sub(1, Ordering::Relaxed);
        t.gauge.decrement(1.0);
    }
}

impl Balance {
    /// For `threads` threads of the listener bound to `listener` on node `node`; the receivers
    /// of the connections handed to each, in thread order.
    pub(crate) fn new(
        threads: usize,
        node: &str,
        listener: SocketAddr,
    ) -> (Arc<Balance>, Vec<UnboundedReceiver<Handed>>) {
        let (threads, receivers): (Vec<_>, Vec<_>) = (0..threads)
            .map(|i| {
                let (handoff, rx) = unbounded_channel();
                let gauge = metrics::gauge!(
                    "meridian_http_thread_connections",
                    "node" => node.to_string(),
                    "listener" => listener.to_string(),
                    "thread" => i.to_string()
                );
                let t = Thread {
                    open: AtomicUsize::new(0),
                    gauge,
                    handoff,
                };
                (t, rx)
            })
            .unzip();
        let balance = Balance {
            threads: threads.into_boxed_slice(),
        };
        (Arc::new(balance), receivers)
    }

    /// Counts a connection accepted on thread `me` to the thread that should serve it: `me`
    /// unless another serves fewer connections (the first of those that serve fewest).
    pub(crate) fn pick(self: &Arc<Self>, me: usize) -> Open {
        let mine = self.threads[me].open.load(Ordering::Relaxed);
        let mut to = me;
        let mut least = mine;
        for (i, t) in self.threads.iter().enumerate() {
            let n = t.open.load(Ordering::Relaxed);
            if n < least {
                (to, least) = (i, n);
            }
        }
        self.count(to)
    }

    /// Counts a connection to thread `thread`.
    pub(crate) fn count(self: &Arc<Self>, thread: usize) -> Open {
        let t = &self.threads[thread];
        t.open.fetch_add(1, Ordering::Relaxed);
        t.gauge.increment(1.0);
        Open {
            balance: self.clone(),
            thread,
        }
    }

    /// Gives `handed` to the thread it is counted to; back if that thread no longer takes any
    /// (it has ended).
    pub(crate) fn hand(&self, handed: Handed) -> Result<(), Handed> {
        self.threads[handed.open.thread]
            .handoff
            .send(handed)
            .map_err(|e| e.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_to_the_thread_that_serves_fewest_and_a_tie_stays() {
        let (b, _rx) = Balance::new(3, "t", "127.0.0.1:1".parse().unwrap());
        let held: Vec<Open> = (0..6).map(|_| b.pick(0)).collect();
        let on = |t: usize| held.iter().filter(|o| o.thread() == t).count();
        assert_eq!((on(0), on(1), on(2)), (2, 2, 2));
        // All equal: the accepting thread keeps it.
        let kept = b.pick(2);
        assert_eq!(kept.thread(), 2);
        drop(held);
        // Thread 2 now serves one, the others none: the first of those goes first.
        assert_eq!(b.pick(2).thread(), 0);
    }

    #[test]
    fn a_thread_that_ended_gives_its_connections_back() {
        let (b, rx) = Balance::new(2, "t", "127.0.0.1:1".parse().unwrap());
        drop(rx);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let permit = Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .unwrap();
        let handed = Handed {
            stream,
            peer: "127.0.0.1:2".parse().unwrap(),
            permit,
            open: b.count(1),
        };
        assert!(b.hand(handed).is_err());
    }
}
