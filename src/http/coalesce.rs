//! A connection's writes gathered into one write per turn of its task.
//!
//! HTTP/2 (the `h2` crate) flushes its connection after every DATA frame whose payload it does
//! not copy (anything over 256 bytes), so ten 1 KiB responses that answer ten requests read in
//! one go went out as ten `writev` calls, and over TLS as ten records (strace of an edge under
//! `h2load -m10`: 73,647 writes for 73,530 responses, 7,610 reads). Here a write that fits in
//! [`CAP`] is copied into a buffer and a flush with bytes buffered returns at once; the
//! connection's task ([`poll_flushing`]) writes the buffer out after each poll of the connection,
//! so what one turn produced leaves in one write, and nothing waits for a later turn. A write
//! that does not fit goes out at once, after what is buffered, in one vectored write; over TLS
//! only its whole records' worth, the tail waiting for the end of the turn like a small write
//! (DATA frames are a 9-byte head and up to 16 KiB: unaligned, each made two records, one of
//! 9 bytes; aligned, 100 KiB HTTP/2 hits over TLS went from 20,600–21,500 to 22,900–23,700/s).
//!
//! Bounded: at most [`CAP`] bytes wait per connection; past that a write waits for the socket,
//! which is the backpressure HTTP has without this.
//!
//! HTTP/2 only: a connection gathers once the client's first bytes are the HTTP/2 preface (over
//! TLS or not). HTTP/1.1 already leaves a response in one `writev` (hyper writes a head and a
//! body together), so there a copy would only cost: its writes go straight to the stream.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes a connection gathers before a write goes out at once: one TLS record's plaintext.
pub(crate) const CAP: usize = 16 * 1024;

/// The HTTP/2 connection preface (RFC 9113 §3.4), which a client sends first.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a connection's writes are gathered.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// Reading the client's first bytes: this many match the preface so far. Writes go
    /// straight through meanwhile (neither protocol writes first).
    Sniffing(usize),
    Gather,
    Direct,
}

struct Inner<S> {
    io: S,
    mode: Mode,
    /// The stream is TLS: a large write goes out in whole records of [`CAP`] bytes.
    records: bool,
    buf: Vec<u8>,
    /// `buf[..start]` is written already.
    start: usize,
    /// Bytes went to the stream and its flush has not completed yet.
    unflushed: bool,
}

impl<S> Inner<S> {
    fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    fn advance(&mut self, n: usize) {
        self.start += n;
        if self.start == self.buf.len() {
            self.start = 0;
            // An idle connection holds no buffer (one allocation per turn that writes).
            self.buf = Vec::new();
        }
    }

    fn append(&mut self, bufs: &[IoSlice<'_>]) {
        self.append_from(bufs, 0);
    }

    /// Appends `bufs` but for their first `skip` bytes.
    fn append_from(&mut self, bufs: &[IoSlice<'_>], mut skip: usize) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        for b in bufs {
            let from = skip.min(b.len());
            skip -= from;
            self.buf.extend_from_slice(&b[from..]);
        }
    }
}

impl<S: AsyncWrite + Unpin> Inner<S> {
    /// Writes out what is buffered, then flushes the stream; nothing at all when nothing is
    /// buffered (it runs after every poll of the connection, and hyper's own flushes reach the
    /// stream directly whenever the buffer is empty).
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending().is_empty() && !self.unflushed {
            return Poll::Ready(Ok(()));
        }
        while !self.pending().is_empty() {
            let start = self.start;
            let n = std::task::ready!(Pin::new(&mut self.io).poll_write(cx, &self.buf[start..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(n);
            // Until the flush completes: TLS may still hold records the socket had no room for.
            self.unflushed = true;
        }
        std::task::ready!(Pin::new(&mut self.io).poll_flush(cx))?;
        self.unflushed = false;
        Poll::Ready(Ok(()))
    }
}

/// The stream side, handed to hyper.
pub(crate) struct Coalesce<S> {
    inner: Arc<Mutex<Inner<S>>>,
}

/// The connection side: see [`poll_flushing`].
pub(crate) struct Drain<S> {
    inner: Arc<Mutex<Inner<S>>>,
}

/// Wraps `io`; the [`Drain`] goes to [`poll_flushing`] with the connection that uses it.
/// Gathers once the client's first bytes turn out to be the HTTP/2 preface; `tls` says the
/// stream makes TLS records of what it is given.
pub(crate) fn coalesce<S>(io: S, tls: bool) -> (Coalesce<S>, Drain<S>) {
    with_mode(io, Mode::Sniffing(0), tls)
}

/// Gathering from the start, as for a connection whose preface has been read (benches).
pub(crate) fn gathering<S>(io: S, tls: bool) -> (Coalesce<S>, Drain<S>) {
    with_mode(io, Mode::Gather, tls)
}

fn with_mode<S>(io: S, mode: Mode, records: bool) -> (Coalesce<S>, Drain<S>) {
    let inner = Arc::new(Mutex::new(Inner {
        io,
        mode,
        records,
        buf: Vec::new(),
        start: 0,
        unflushed: false,
    }));
    (
        Coalesce {
            inner: inner.clone(),
        },
        Drain { inner },
    )
}

fn lock<S>(m: &Mutex<Inner<S>>) -> MutexGuard<'_, Inner<S>> {
    // One task uses both halves, so the lock is never contended; a panic while it was held
    // cannot leave the buffer half-written (every change is a whole append or advance).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalesce<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut inner = lock(&self.inner);
        let before = buf.filled().len();
        let r = Pin::new(&mut inner.io).poll_read(cx, buf);
        if let Mode::Sniffing(seen) = inner.mode {
            let read = &buf.filled()[before..];
            if !read.is_empty() {
                let want = &PREFACE[seen..];
                let n = read.len().min(want.len());
                inner.mode = if read[..n] != want[..n] {
                    Mode::Direct
                } else if seen + n == PREFACE.len() {
                    Mode::Gather
                } else {
                    Mode::Sniffing(seen + n)
                };
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesce<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(data)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut inner = lock(&self.inner);
        if inner.mode != Mode::Gather {
            return Pin::new(&mut inner.io).poll_write_vectored(cx, bufs);
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        loop {
            let held = inner.pending().len();
            if held + total <= CAP {
                inner.append(bufs);
                return Poll::Ready(Ok(total));
            }
            // What is buffered, then these, in one write; over TLS of whole records, the tail
            // that would make a short record kept for the end of the turn (an HTTP/2 DATA
            // frame is 9 bytes over a record, so every frame cost a 9-byte record besides).
            let whole = if inner.records {
                (held + total) / CAP * CAP
            } else {
                held + total
            };
            let Inner { io, buf, start, .. } = &mut *inner;
            let mut iov = Vec::with_capacity(bufs.len() + 1);
            if held > 0 {
                iov.push(IoSlice::new(&buf[*start..]));
            }
            let mut room = whole - held;
            for b in bufs {
                if room == 0 {
                    break;
                }
                let take = b.len().min(room);
                iov.push(IoSlice::new(&b[..take]));
                room -= take;
            }
            let n = std::task::ready!(Pin::new(io).poll_write_vectored(cx, &iov))?;
            drop(iov);
            if n == 0 {
                return Poll::Ready(Ok(0));
            }
            if n <= held {
                inner.advance(n);
                // Only buffered bytes went: try again, now with more room.
                continue;
            }
            inner.advance(held);
            let taken = n - held;
            if n < whole {
                return Poll::Ready(Ok(taken));
            }
            // All of it went: the tail (less than a record) waits in the buffer.
            inner.append_from(bufs, taken);
            return Poll::Ready(Ok(total));
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut inner = lock(&self.inner);
        if inner.pending().is_empty() {
            Pin::new(&mut inner.io).poll_flush(cx)
        } else {
            // Written (and the stream flushed) by `poll_flushing` once this poll is over.
            Poll::Ready(Ok(()))
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut inner = lock(&self.inner);
        std::task::ready!(inner.poll_drain(cx))?;
        Pin::new(&mut inner.io).poll_shutdown(cx)
    }
}

impl<S: AsyncWrite + Unpin> Drain<S> {
    /// Writes out what the connection buffered; call after every poll of the connection (its
    /// flushes returned without writing). Pending while the stream is full: it wakes the task.
    pub(crate) fn poll_drain(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        lock(&self.inner).poll_drain(cx)
    }
}

/// Polls `conn` and then writes out what that poll buffered; ready once the connection has
/// ended (its output kept in `ended` meanwhile) and its last bytes are written, or at once
/// with the error if a write fails (hyper would only see it at its next write).
pub(crate) fn poll_flushing<F, S>(
    conn: Pin<&mut F>,
    drain: &Drain<S>,
    ended: &mut Option<F::Output>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), ConnError>>
where
    F: Future<Output = Result<(), ConnError>>,
    S: AsyncWrite + Unpin,
{
    if ended.is_none() {
        if let Poll::Ready(out) = conn.poll(cx) {
            *ended = Some(out);
        }
    }
    match std::task::ready!(drain.poll_drain(cx)) {
        Err(e) => Poll::Ready(Err(e.into())),
        Ok(()) => match ended.take() {
            Some(out) => Poll::Ready(out),
            None => Poll::Pending,
        },
    }
}

/// hyper's connection error.
pub(crate) type ConnError = Box<dyn std::error::Error + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// A stream that notes the size of each write it is given.
    struct Counted<S> {
        io: S,
        writes: Writes,
    }

    impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let r = Pin::new(&mut self.io).poll_write(cx, data);
            if let Poll::Ready(Ok(n)) = r {
                self.writes.lock().unwrap().push(n);
            }
            r
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            // One write of everything (a duplex stream has no vectored write of its own).
            let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            let r = Pin::new(&mut self.io).poll_write(cx, &all);
            if let Poll::Ready(Ok(n)) = r {
                self.writes.lock().unwrap().push(n);
            }
            r
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    /// The sizes of the writes that reached the stream.
    type Writes = Arc<Mutex<Vec<usize>>>;

    fn count(writes: &Writes) -> usize {
        writes.lock().unwrap().len()
    }
    type Ours = Counted<DuplexStream>;

    /// A connection whose client sent `first` (in pieces of `piece` bytes), read through it;
    /// `tls` as for [`coalesce`].
    async fn counted_after(
        first: &[u8],
        piece: usize,
        tls: bool,
    ) -> (Coalesce<Ours>, Drain<Ours>, DuplexStream, Writes) {
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let writes = Arc::default();
        let (mut io, drain) = coalesce(
            Counted {
                io: ours,
                writes: Arc::clone(&writes),
            },
            tls,
        );
        for part in first.chunks(piece) {
            theirs.write_all(part).await.unwrap();
            let mut got = vec![0u8; part.len()];
            io.read_exact(&mut got).await.unwrap();
        }
        (io, drain, theirs, writes)
    }

    /// An HTTP/2 connection (over TLS if `tls`).
    async fn counted(tls: bool) -> (Coalesce<Ours>, Drain<Ours>, DuplexStream, Writes) {
        counted_after(PREFACE, PREFACE.len(), tls).await
    }

    /// Ten writes, each flushed, in one poll; how many writes reached the stream before the
    /// drain, and after it.
    async fn ten_writes_in_one_poll(
        io: &mut Coalesce<Ours>,
        drain: &Drain<Ours>,
        writes: &Writes,
    ) -> (usize, usize) {
        let mut conn = Box::pin(std::future::poll_fn(|cx| -> Poll<Result<(), ConnError>> {
            for i in 0..10u8 {
                let piece = [i; 100];
                assert!(matches!(
                    Pin::new(&mut *io).poll_write(cx, &piece),
                    Poll::Ready(Ok(100))
                ));
                assert!(matches!(
                    Pin::new(&mut *io).poll_flush(cx),
                    Poll::Ready(Ok(()))
                ));
            }
            Poll::Ready(Ok(()))
        }));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(conn.as_mut().poll(&mut cx).is_ready());
        let before = count(writes);
        std::future::poll_fn(|cx| drain.poll_drain(cx))
            .await
            .unwrap();
        (before, count(writes))
    }

    /// Ten small writes, each flushed, within one poll of the connection (HTTP/2 answering ten
    /// requests read at once) reach the stream as one write, after that poll, in order.
    #[tokio::test]
    async fn writes_of_one_poll_leave_in_one_write_and_in_order() {
        let (mut io, drain, mut theirs, writes) = counted(true).await;
        assert_eq!(
            ten_writes_in_one_poll(&mut io, &drain, &writes).await,
            (0, 1)
        );
        let mut got = vec![0u8; 1000];
        theirs.read_exact(&mut got).await.unwrap();
        let expected: Vec<u8> = (0..10u8).flat_map(|i| [i; 100]).collect();
        assert_eq!(got, expected);
    }

    /// A write that does not fit goes out at once, behind what was buffered, in one write.
    #[tokio::test]
    async fn a_large_write_goes_at_once_behind_the_buffered_bytes() {
        let (mut io, _drain, mut theirs, writes) = counted(false).await;
        io.write_all(b"head").await.unwrap();
        assert_eq!(count(&writes), 0);
        let big = vec![7u8; CAP + 1];
        let n = std::future::poll_fn(|cx| Pin::new(&mut io).poll_write(cx, &big)).await;
        assert_eq!(n.unwrap(), CAP + 1);
        assert_eq!(*writes.lock().unwrap(), [CAP + 5]);
        let mut got = vec![0u8; 5 + CAP];
        let read = tokio::time::timeout(Duration::from_secs(5), theirs.read_exact(&mut got));
        read.await.expect("written at once").unwrap();
        assert_eq!(&got[..4], b"head");
        assert!(got[4..].iter().all(|b| *b == 7));
    }

    /// Over TLS, HTTP/2 DATA frames (a 9-byte head and [`CAP`] bytes of payload, as h2 writes
    /// them) go out in whole records: each write but the turn's last is a multiple of a
    /// record, and the bytes arrive whole and in order. Unaligned, every frame made a full
    /// record and a 9-byte one.
    #[tokio::test]
    async fn over_tls_large_writes_go_in_whole_records() {
        let (mut io, drain, mut theirs, writes) = counted(true).await;
        io.write_all(b"response head").await.unwrap();
        let mut sent = b"response head".to_vec();
        for i in 0..7u8 {
            let head = [i; 9];
            let payload = vec![i.wrapping_mul(31); CAP];
            let mut bufs = [IoSlice::new(&head), IoSlice::new(&payload)];
            let mut bufs = &mut bufs[..];
            while !bufs.is_empty() {
                let n = std::future::poll_fn(|cx| Pin::new(&mut io).poll_write_vectored(cx, bufs))
                    .await
                    .unwrap();
                IoSlice::advance_slices(&mut bufs, n);
            }
            sent.extend_from_slice(&head);
            sent.extend_from_slice(&payload);
        }
        std::future::poll_fn(|cx| drain.poll_drain(cx))
            .await
            .unwrap();
        let sizes = writes.lock().unwrap().clone();
        let (last, before) = sizes.split_last().unwrap();
        assert!(before.iter().all(|n| n % CAP == 0), "{sizes:?}");
        assert_eq!(
            *last,
            13 + 7 * 9,
            "the tails, written by the drain: {sizes:?}"
        );
        let mut got = vec![0u8; sent.len()];
        theirs.read_exact(&mut got).await.unwrap();
        assert!(got == sent);
    }

    /// Cleartext has no records: a large write goes out whole, with nothing kept back.
    #[tokio::test]
    async fn in_cleartext_a_large_write_goes_out_whole() {
        let (mut io, _drain, _theirs, writes) = counted(false).await;
        let payload = vec![1u8; CAP + 9];
        let n = std::future::poll_fn(|cx| Pin::new(&mut io).poll_write(cx, &payload)).await;
        assert_eq!(n.unwrap(), CAP + 9);
        assert_eq!(*writes.lock().unwrap(), [CAP + 9]);
    }

    /// A stream whose first flush is not done at once (TLS records the socket had no room
    /// for); counts its flushes.
    struct SlowFlush {
        io: DuplexStream,
        flushes: usize,
    }

    impl AsyncWrite for SlowFlush {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.io).poll_write(cx, data)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            if self.flushes == 1 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Pin::new(&mut self.io).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    /// A flush that was not done when the buffer went out is asked again after the next poll,
    /// though nothing new is buffered: the last bytes of a response do not stay behind.
    #[tokio::test]
    async fn an_unfinished_flush_is_finished_after_the_next_poll() {
        let (ours, _theirs) = tokio::io::duplex(1 << 20);
        let (mut io, drain) = with_mode(
            SlowFlush {
                io: ours,
                flushes: 0,
            },
            Mode::Gather,
            true,
        );
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(matches!(
            Pin::new(&mut io).poll_write(&mut cx, b"last bytes"),
            Poll::Ready(Ok(10))
        ));
        assert!(drain.poll_drain(&mut cx).is_pending());
        assert!(matches!(drain.poll_drain(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(lock(&drain.inner).io.flushes, 2);
        // Then nothing to do: no flush at all.
        assert!(matches!(drain.poll_drain(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(lock(&drain.inner).io.flushes, 2);
    }

    /// A shutdown writes what is buffered first.
    #[tokio::test]
    async fn a_shutdown_writes_what_is_buffered() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let (mut io, _drain) = with_mode(ours, Mode::Gather, true);
        io.write_all(b"last words").await.unwrap();
        io.flush().await.unwrap();
        io.shutdown().await.unwrap();
        let mut got = Vec::new();
        theirs.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");
    }

    /// A client whose preface comes in pieces is an HTTP/2 client all the same.
    #[tokio::test]
    async fn a_preface_read_in_pieces_turns_gathering_on() {
        let (mut io, drain, _theirs, writes) = counted_after(PREFACE, 5, true).await;
        assert_eq!(
            ten_writes_in_one_poll(&mut io, &drain, &writes).await,
            (0, 1)
        );
    }

    /// HTTP/1.1 (hyper writes each response in one go): writes go straight to the stream.
    #[tokio::test]
    async fn an_http1_connection_writes_straight_through() {
        let request = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";
        let (mut io, drain, _theirs, writes) = counted_after(request, request.len(), true).await;
        assert_eq!(
            ten_writes_in_one_poll(&mut io, &drain, &writes).await,
            (10, 10)
        );
        // A client that starts like the preface and then differs is not HTTP/2.
        let (mut io, drain, _theirs, writes) = counted_after(b"PRI * HTTP/1.1\r\n", 3, true).await;
        assert_eq!(
            ten_writes_in_one_poll(&mut io, &drain, &writes).await,
            (10, 10)
        );
    }
}
