//! A response body being filled from its origin while clients read it (read-while-write).
//!
//! The fetch task appends each chunk as it arrives ([`Growing::push`]); every client of the
//! object (the request that caused the fetch and any collapsed onto it) reads through its own
//! [`Tail`], which yields what has arrived and waits for more. When the body is complete and
//! stored, the chunks are dropped and readers go on from the stored entry's one contiguous body,
//! so an object is held twice only for the moment of the copy. When the origin body fails
//! (ends short, errs, stalls past the read timeout) every reader fails with it: a client sees
//! its response aborted, never a clean end of a partial body.
//!
//! A body of unknown length that outgrows `max_object_size` is not stored: the fill is
//! *released*, chunks that every reader has passed are dropped at once, no new reader can
//! join, and the fetch stops when the last reader goes. A released fill reads its origin no
//! further ahead of its slowest reader than [`RELEASED_AHEAD`] ([`Growing::poll_room`]): with
//! nothing to store, holding more would only let a slow client make the edge hold the origin's
//! whole body.
//!
//! A body too large for memory (with a disk tier) is *spilled*: the fetch task writes it to disk
//! as it arrives (`disk::Spool`) and drops from memory what is there; a reader behind reads
//! those bytes from disk, then goes on from memory.
//!
//! Fairness: a reader takes at most [`BURST`] bytes of a fill in progress per poll and then lets
//! the other tasks of its thread run before it takes more (its connection writes them first). A client that joins an object while
//! it is arriving finds a backlog (a megabyte a hundred milliseconds into a 15 MiB body); without
//! the yield its connection's task would write all of it at once, and a hundred clients joining
//! together would each wait for the others' backlogs before their first byte went out.
//!
//! Concurrency: one `Mutex` per fill, held only to copy a `Bytes` handle or update a position,
//! never across an await; wakers are woken after the lock is released.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

use super::disk::{DiskBody, DiskTail};
use super::entry::Entry;

/// Bytes of a fill in progress a reader takes before it yields to other tasks.
pub(crate) const BURST: usize = 16 * 1024;

/// How far a released fill reads ahead of its slowest reader.
pub(crate) const RELEASED_AHEAD: u64 = 1 << 20;

/// The memory the edge's fills may hold for the store at once. A body is held whole until it
/// is stored, so without a bound, enough misses at once for large objects (each within
/// `max_object_size`) would hold any amount of memory on top of `cache_memory`. A fill takes
/// its declared length before it starts (or its bytes as they come, when no length was
/// declared); one that does not fit is not stored: its clients get the origin's answer passed
/// through, at their own pace.
#[derive(Debug)]
pub(crate) struct FillBudget {
    held: AtomicU64,
    limit: u64,
}

impl FillBudget {
    pub(crate) fn new(limit: u64) -> Arc<FillBudget> {
        Arc::new(FillBudget {
            held: AtomicU64::new(0),
            limit,
        })
    }

    /// Bytes the edge's fills hold now.
    pub(crate) fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// A fill's share, nothing in it yet; given back when dropped.
    pub(crate) fn share(self: &Arc<Self>) -> Share {
        Share {
            budget: self.clone(),
            bytes: 0,
        }
    }
}

/// A stored body's claim on the [`FillBudget`] once the store has let its entry go (evicted,
/// expired, purged) while responses still hold the body: a client that reads slowly holds a
/// whole stored body for as long as it takes, so without this, clients of objects the store
/// then evicted held any amount beyond `cache_memory` (200 that read nothing, on distinct
/// 4 MiB objects, took an edge with 16 MiB of cache from 23 to 600 MB). Counted from the
/// eviction ([`Residence::pin`]) until the last holder of the body or its entry is gone; while
/// the fills' budget is full of such bodies, new fills are passed through unstored.
#[derive(Debug)]
pub(crate) struct Residence {
    budget: Arc<FillBudget>,
    bytes: u64,
    pinned: std::sync::atomic::AtomicBool,
}

impl Residence {
    /// The store let the entry go: its body counts in the budget until it is dropped.
    pub(crate) fn pin(&self) {
        if !self.pinned.swap(true, Ordering::Relaxed) {
            self.budget.held.fetch_add(self.bytes, Ordering::Relaxed);
        }
    }
}

impl Drop for Residence {
    fn drop(&mut self) {
        if *self.pinned.get_mut() {
            self.budget.held.fetch_sub(self.bytes, Ordering::Relaxed);
        }
    }
}

/// A stored body's bytes, which keep its [`Residence`] as long as any of them is held.
struct Resident<T> {
    bytes: T,
    _residence: Arc<Residence>,
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Resident<T> {
    fn as_ref(&self) -> &[u8] {
        self.bytes.as_ref()
    }
}

impl FillBudget {
    /// `bytes` as a stored body whose residence the budget will count once its entry leaves
    /// the store while the body is still held.
    pub(crate) fn resident(self: &Arc<Self>, bytes: Vec<u8>) -> (Bytes, Arc<Residence>) {
        self.hold(bytes)
    }

    /// As [`FillBudget::resident`], for a body already in memory (read back from the disk).
    pub(crate) fn resident_bytes(self: &Arc<Self>, bytes: Bytes) -> (Bytes, Arc<Residence>) {
        self.hold(bytes)
    }

    fn hold<T: AsRef<[u8]> + Send + 'static>(
        self: &Arc<Self>,
        bytes: T,
    ) -> (Bytes, Arc<Residence>) {
        let residence = Arc::new(Residence {
            budget: self.clone(),
            bytes: bytes.as_ref().len() as u64,
            pinned: std::sync::atomic::AtomicBool::new(false),
        });
        let body = Bytes::from_owner(Resident {
            bytes,
            _residence: residence.clone(),
        });
        (body, residence)
    }
}

/// What one fill holds of the [`FillBudget`].
#[derive(Debug)]
pub(crate) struct Share {
    budget: Arc<FillBudget>,
    bytes: u64,
}

impl Share {
    /// Takes `n` more bytes; false, taking nothing, if the fills would then hold more than the
    /// limit.
    pub(crate) fn take(&mut self, n: u64) -> bool {
        let limit = self.budget.limit;
        let taken = self
            .budget
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| {
                h.checked_add(n).filter(|&t| t <= limit)
            })
            .is_ok();
        if taken {
            self.bytes += n;
        }
        taken
    }

    /// Gives back everything taken.
    pub(crate) fn give_back(&mut self) {
        self.budget.held.fetch_sub(self.bytes, Ordering::Relaxed);
        self.bytes = 0;
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.give_back();
    }
}

/// A body being received from an origin, shared by its readers.
#[derive(Debug)]
pub(crate) struct Growing {
    inner: Mutex<Inner>,
    /// The length the origin declared, if it did (the stream is held to it by hyper).
    declared: Option<u64>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Chunks received and not yet dropped; `starts[i]` is the offset of `chunks[i]`.
    chunks: VecDeque<Bytes>,
    starts: VecDeque<u64>,
    /// Bytes received so far.
    len: u64,
    state: State,
    /// Readers waiting for more.
    wakers: Vec<Waker>,
    /// Each live reader's position, for dropping chunks every reader has passed once released.
    readers: HashMap<u64, u64>,
    /// The fetch, waiting for readers of a released fill to catch up.
    room: Option<Waker>,
    next_id: u64,
    released: bool,
    /// When the body is also being written to disk: where, and how much of it is there (the
    /// chunks before that are dropped from memory; readers behind read them from disk).
    spill: Option<DiskBody>,
    spilled: u64,
}

#[derive(Debug, Default)]
enum State {
    #[default]
    Open,
    /// Complete and stored: readers go on from this entry's body.
    Stored(Arc<Entry>),
    /// Complete, not stored (the fill was released).
    Ended,
    /// The origin body failed, or nobody was left to read a released fill.
    Failed,
}

/// Why a reader of a fill fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the origin's response body failed while it was being filled")]
pub(crate) struct FillFailed;

impl Growing {
    pub(crate) fn new(declared: Option<u64>) -> Arc<Growing> {
        Arc::new(Growing {
            inner: Mutex::new(Inner::default()),
            declared,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // cannot fail in practice: nothing panics under this lock; recover the guard anyway.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a chunk and wakes the readers waiting for it.
    pub(crate) fn push(&self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        let wakers = {
            let mut g = self.lock();
            let at = g.len;
            g.len += chunk.len() as u64;
            g.chunks.push_back(chunk);
            g.starts.push_back(at);
            if g.released {
                // The fetch itself pushes: it is not waiting for room.
                let _ = g.trim();
            }
            std::mem::take(&mut g.wakers)
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// All bytes received, in one contiguous buffer (the stored body).
    pub(crate) fn concat(&self) -> Bytes {
        Bytes::from(self.concat_vec())
    }

    /// The body so far, in one buffer.
    pub(crate) fn concat_vec(&self) -> Vec<u8> {
        let g = self.lock();
        let mut buf = Vec::with_capacity(usize::try_from(g.len).unwrap_or(0));
        for c in &g.chunks {
            buf.extend_from_slice(c);
        }
        buf
    }

    fn end(&self, state: State) {
        let wakers = {
            let mut g = self.lock();
            g.state = state;
            if !matches!(g.state, State::Ended) {
                g.chunks.clear();
                g.starts.clear();
            }
            std::mem::take(&mut g.wakers)
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// The body is complete and stored as `entry`: readers go on from its body.
    pub(crate) fn stored(&self, entry: Arc<Entry>) {
        self.end(State::Stored(entry));
    }

    /// The body is complete but not stored.
    pub(crate) fn ended(&self) {
        self.end(State::Ended);
    }

    /// The body failed: every reader fails.
    pub(crate) fn fail(&self) {
        self.end(State::Failed);
    }

    /// The body is also being written to disk as `body`.
    pub(crate) fn spill_to(&self, body: DiskBody) {
        self.lock().spill = Some(body);
    }

    /// The first `upto` bytes are on disk: drop them from memory.
    pub(crate) fn spilled(&self, upto: u64) {
        let mut g = self.lock();
        g.spilled = upto;
        while let (Some(c), Some(&s)) = (g.chunks.front(), g.starts.front()) {
            if s + c.len() as u64 > upto {
                break;
            }
            g.chunks.pop_front();
            g.starts.pop_front();
        }
    }

    /// The body will not be stored: drop what every reader has passed, admit no new reader.
    pub(crate) fn release(&self) {
        let mut g = self.lock();
        g.released = true;
        // Called by the fetch: it is not waiting for room.
        let _ = g.trim();
    }

    /// Live readers.
    pub(crate) fn readers(&self) -> usize {
        self.lock().readers.len()
    }

    /// Ready when the fetch may read on: at once unless released; once released, when its
    /// readers have all read to within [`RELEASED_AHEAD`] of what has arrived (or none is left).
    pub(crate) fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut g = self.lock();
        let held: u64 = g.chunks.iter().map(|c| c.len() as u64).sum();
        if !g.released || g.readers.is_empty() || held <= RELEASED_AHEAD {
            return Poll::Ready(());
        }
        g.room = Some(cx.waker().clone());
        Poll::Pending
    }

    /// A reader from the first byte, or `None` if that is no longer possible (the fill failed,
    /// or was released and has dropped its start): the caller fetches on its own.
    pub(crate) fn reader(self: &Arc<Self>) -> Option<Tail> {
        let mut g = self.lock();
        if matches!(g.state, State::Failed) || g.released {
            return None;
        }
        let id = g.next_id;
        g.next_id += 1;
        g.readers.insert(id, 0);
        Some(Tail {
            src: self.clone(),
            id,
            pos: 0,
            end: self.declared,
            disk: None,
            client: None,
            burst: 0,
            yielding: false,
        })
    }

    /// Waits until the body is complete; the stored entry, or `None` if it failed or was not
    /// stored.
    pub(crate) async fn finished(&self) -> Option<Arc<Entry>> {
        std::future::poll_fn(|cx| {
            let mut g = self.lock();
            match &g.state {
                State::Open => {
                    if !g.wakers.iter().any(|w| w.will_wake(cx.waker())) {
                        g.wakers.push(cx.waker().clone());
                    }
                    Poll::Pending
                }
                State::Stored(e) => Poll::Ready(Some(e.clone())),
                State::Ended | State::Failed => Poll::Ready(None),
            }
        })
        .await
    }
}

impl Inner {
    /// Drops the chunks every reader has passed (only once released); the fetch waiting for
    /// room, to be woken once the lock is let go.
    #[must_use]
    fn trim(&mut self) -> Option<Waker> {
        let keep_from = self.readers.values().copied().min().unwrap_or(self.len);
        while let (Some(c), Some(&s)) = (self.chunks.front(), self.starts.front()) {
            if s + c.len() as u64 > keep_from {
                break;
            }
            self.chunks.pop_front();
            self.starts.pop_front();
        }
        self.room.take()
    }
}

/// One client's read position in a [`Growing`] body: yields bytes `pos..end` as they arrive.
#[derive(Debug)]
pub(crate) struct Tail {
    src: Arc<Growing>,
    id: u64,
    pos: u64,
    /// Exclusive end of what this reader wants; `None`: to the end of the body.
    end: Option<u64>,
    /// While reading what is on disk rather than in memory.
    disk: Option<Box<DiskTail>>,
    /// Whose share of the disk tier's read room what it reads from disk takes (see
    /// `DiskTail::client`).
    pub(crate) client: Option<std::net::IpAddr>,
    /// Bytes taken from the fill since this reader last waited or yielded.
    burst: usize,
    /// Between the two polls of a yield.
    yielding: bool,
}

impl Tail {
    /// Narrows this reader to bytes `first..=last` (a range request).
    pub(crate) fn range(mut self, first: u64, last: u64) -> Tail {
        self.pos = first;
        self.end = Some(last.saturating_add(1));
        self.src.lock().readers.insert(self.id, first);
        self
    }

    /// The fill this reader reads.
    pub(crate) fn source(&self) -> &Arc<Growing> {
        &self.src
    }

    /// Bytes this reader has yet to yield, if known.
    pub(crate) fn remaining(&self) -> Option<u64> {
        self.end.map(|e| e.saturating_sub(self.pos))
    }

    /// The next piece of the body: `Ready(None)` at its end, an error if the fill failed.
    pub(crate) fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, FillFailed>>> {
        if self.end.is_some_and(|e| self.pos >= e) {
            return Poll::Ready(None);
        }
        if self.burst >= BURST || self.yielding {
            // Let the thread's other tasks run (the task is queued behind them), then go on.
            // Twice: hyper's HTTP/1 writer, having flushed what a pending body left it, polls
            // the body once more in the same turn, and that poll must not find bytes either.
            // Where nothing polls again at once, the second costs one more pass of the queue.
            self.yielding = self.burst >= BURST;
            self.burst = 0;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if let Some(d) = &mut self.disk {
            match d.poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(piece))) => {
                    self.pos += piece.len() as u64;
                    let pos = self.pos;
                    self.src.lock().readers.insert(self.id, pos);
                    return Poll::Ready(Some(Ok(piece)));
                }
                Poll::Ready(Some(Err(_))) => return Poll::Ready(Some(Err(FillFailed))),
                // What was on disk is read: back to memory.
                Poll::Ready(None) => self.disk = None,
            }
        }
        let mut g = self.src.lock();
        if let State::Stored(entry) = &g.state {
            if let Some(body) = &entry.on_disk {
                let stop = self.end.map_or(body.len, |e| e.min(body.len));
                if self.pos >= stop {
                    return Poll::Ready(None);
                }
                self.disk = Some(Box::new(body.reader(self.pos, stop, self.client)));
                drop(g);
                return self.poll_next(cx);
            }
            let body = &entry.body;
            let len = body.len() as u64;
            let stop = self.end.map_or(len, |e| e.min(len));
            if self.pos >= stop {
                return Poll::Ready(if self.pos < self.end.unwrap_or(0) {
                    Some(Err(FillFailed))
                } else {
                    None
                });
            }
            // cannot truncate: both offsets are within a body held in memory.
            let piece = body.slice(self.pos as usize..stop as usize);
            self.pos = stop;
            return Poll::Ready(Some(Ok(piece)));
        }
        if self.pos < g.len {
            // Everything received is dropped when it is all on disk.
            let first = g.starts.front().copied().unwrap_or(g.len);
            if self.pos < first {
                // On disk: read it from there.
                if let Some(body) = &g.spill {
                    let stop = self.end.map_or(g.spilled, |e| e.min(g.spilled));
                    if self.pos < stop {
                        self.disk = Some(Box::new(body.reader(self.pos, stop, self.client)));
                        drop(g);
                        return self.poll_next(cx);
                    }
                }
                // Dropped before this reader got there (a released fill).
                return Poll::Ready(Some(Err(FillFailed)));
            }
            let i = g.starts.partition_point(|&s| s <= self.pos) - 1;
            let (chunk, start) = (&g.chunks[i], g.starts[i]);
            let from = (self.pos - start) as usize;
            let to = self
                .end
                .map_or(chunk.len(), |e| chunk.len().min((e - start) as usize))
                .min(from + BURST);
            let piece = chunk.slice(from..to);
            self.pos += piece.len() as u64;
            self.burst += piece.len();
            let pos = self.pos;
            g.readers.insert(self.id, pos);
            if g.released {
                let room = g.trim();
                drop(g);
                room.into_iter().for_each(Waker::wake);
            }
            return Poll::Ready(Some(Ok(piece)));
        }
        match g.state {
            State::Open => {
                if !g.wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    g.wakers.push(cx.waker().clone());
                }
                self.burst = 0;
                Poll::Pending
            }
            // A range past the end of a body that ended: the body was shorter than declared.
            State::Ended if self.end.is_some_and(|e| self.pos < e) => {
                Poll::Ready(Some(Err(FillFailed)))
            }
            State::Ended | State::Stored(_) => Poll::Ready(None),
            State::Failed => Poll::Ready(Some(Err(FillFailed))),
        }
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let mut g = self.src.lock();
        g.readers.remove(&self.id);
        if g.released {
            let room = g.trim();
            drop(g);
            room.into_iter().for_each(Waker::wake);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    async fn next(t: &mut Tail) -> Option<Result<Bytes, FillFailed>> {
        poll_fn(|cx| t.poll_next(cx)).await
    }

    #[test]
    fn an_evicted_body_counts_in_the_budget_while_it_is_held() {
        let budget = FillBudget::new(1 << 20);
        let (body, residence) = budget.resident(vec![7u8; 1000]);
        let held_by_a_client = body.slice(10..20);
        drop(body);
        assert_eq!(budget.held(), 0, "in the store: counted there, not here");
        residence.pin();
        residence.pin();
        assert_eq!(
            budget.held(),
            1000,
            "let go by the store, still held: counted once"
        );
        drop(residence);
        assert_eq!(budget.held(), 1000);
        drop(held_by_a_client);
        assert_eq!(budget.held(), 0, "dropped by its last holder: given back");
        // Never let go by the store: never counted.
        let (body, residence) = budget.resident(vec![1u8; 10]);
        drop((body, residence));
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn fills_share_a_budget_and_give_back_what_they_took() {
        let budget = FillBudget::new(10);
        let mut a = budget.share();
        let mut b = budget.share();
        assert!(a.take(6));
        assert!(!b.take(5), "6 + 5 is past 10");
        assert_eq!(budget.held(), 6, "a refused take takes nothing");
        assert!(b.take(4));
        assert!(!a.take(1));
        drop(a);
        assert_eq!(budget.held(), 4);
        b.give_back();
        assert_eq!(budget.held(), 0);
        assert!(!budget.share().take(u64::MAX), "no overflow");
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn readers_get_chunks_as_they_arrive_and_end_with_the_body() {
        let g = Growing::new(None);
        let mut a = g.reader().unwrap();
        g.push(Bytes::from_static(b"hello "));
        assert_eq!(next(&mut a).await.unwrap().unwrap(), "hello ");
        let waiting = tokio::spawn(async move {
            let mut out = Vec::new();
            while let Some(p) = next(&mut a).await {
                out.extend_from_slice(&p.unwrap());
            }
            out
        });
        tokio::task::yield_now().await;
        g.push(Bytes::from_static(b"world"));
        g.ended();
        assert_eq!(waiting.await.unwrap(), b"world");
    }

    #[tokio::test]
    async fn a_failed_fill_fails_every_reader_and_admits_none() {
        let g = Growing::new(Some(10));
        let mut a = g.reader().unwrap();
        g.push(Bytes::from_static(b"12345"));
        assert_eq!(next(&mut a).await.unwrap().unwrap(), "12345");
        g.fail();
        assert_eq!(next(&mut a).await, Some(Err(FillFailed)));
        assert!(g.reader().is_none());
    }

    #[tokio::test]
    async fn a_range_reader_takes_only_its_bytes_across_chunks() {
        let g = Growing::new(Some(9));
        let mut r = g.reader().unwrap().range(2, 6);
        assert_eq!(r.remaining(), Some(5));
        g.push(Bytes::from_static(b"abc"));
        g.push(Bytes::from_static(b"def"));
        g.push(Bytes::from_static(b"ghi"));
        let mut out = Vec::new();
        while let Some(p) = next(&mut r).await {
            out.extend_from_slice(&p.unwrap());
        }
        assert_eq!(out, b"cdefg");
    }

    #[test]
    fn a_released_fill_drops_what_every_reader_has_passed() {
        let g = Growing::new(None);
        let mut a = g.reader().unwrap();
        let b = g.reader().unwrap();
        g.push(Bytes::from_static(b"aaaa"));
        g.push(Bytes::from_static(b"bbbb"));
        g.release();
        assert!(g.reader().is_none(), "no reader joins a released fill");
        let waker = futures_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(matches!(a.poll_next(&mut cx), Poll::Ready(Some(Ok(_)))));
        assert_eq!(g.lock().chunks.len(), 2, "b still needs the first chunk");
        drop(b);
        assert_eq!(g.lock().chunks.len(), 1, "only a's unread chunk is left");
        assert_eq!(g.readers(), 1);
    }

    #[test]
    fn a_reader_joining_a_backlog_takes_it_in_bursts_and_yields_between_them() {
        struct Count(std::sync::atomic::AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let count = Arc::new(Count(Default::default()));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let g = Growing::new(None);
        // A megabyte has arrived in four chunks before this reader joins.
        for _ in 0..4 {
            g.push(Bytes::from(vec![7u8; 256 * 1024]));
        }
        let mut r = g.reader().unwrap();
        let (mut got, mut yields) = (0, 0);
        for _ in 0..1000 {
            match r.poll_next(&mut cx) {
                Poll::Ready(Some(Ok(piece))) => {
                    assert!(piece.len() <= BURST, "a piece of {} bytes", piece.len());
                    got += piece.len();
                }
                // A yield: the reader woke itself, so its task runs again after the others.
                Poll::Pending if count.0.load(Ordering::Relaxed) > yields => {
                    yields += 1;
                }
                // Waiting for bytes that have not arrived.
                Poll::Pending => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got, 1024 * 1024);
        // Each yield is two polls that find nothing (see `poll_next`).
        assert_eq!(yields, 2 * 1024 * 1024 / BURST);
        assert_eq!(r.pos, 1024 * 1024);
    }

    fn futures_waker() -> Waker {
        Waker::noop().clone()
    }
}
