//! A watch on HTTP/1 request framing, fed the raw bytes a client sends.
//!
//! hyper resolves a request that carries both `Content-Length` and `Transfer-Encoding` by
//! dropping the length and closing the connection afterwards (RFC 9112 §6.3 allows that). We
//! reject such requests instead (a proxy in front of other parsers is where smuggling happens), so
//! this guard follows the message boundaries itself: request head, then a body of
//! `Content-Length` bytes or chunked, then the next head. It reports the index (0-based, in
//! connection order) of the first head whose framing is ambiguous; `server` hands that index to
//! the request with the same number, and the handler answers it 400.
//!
//! Inside a chunked body it also finds what hyper accepts but other parsers read differently
//! (a chunk size of 2^63 or more, control bytes or an unterminated quoted string in a chunk
//! extension) and reports it as a [`BodyFault`] for that request: its body then fails and the
//! handler answers 400 (RFC 9112 §7.1).
//!
//! It never changes the bytes and stops watching (for good) on anything it does not model:
//! HTTP/2 prior knowledge, oversized heads, unparseable lengths (hyper rejects those itself),
//! and anything after a fault.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The conflict found in a request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Conflict {
    LengthAndChunked,
    DifferingLengths,
    /// `chunked` more than once, or not the last coding (RFC 9112 §6.1).
    BadTransferEncoding,
}

impl Conflict {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Conflict::LengthAndChunked => "both Content-Length and Transfer-Encoding",
            Conflict::DifferingLengths => "conflicting Content-Length values",
            Conflict::BadTransferEncoding => "Transfer-Encoding must end in one chunked",
        }
    }
}

/// The first body-level framing fault of a connection: which request's body, and why.
/// Written by the connection's guard, read by that request's body.
#[derive(Debug, Default)]
pub(crate) struct BodyFault {
    /// Index + 1 of the request whose body is at fault; 0 for none.
    request: AtomicU64,
    reason: Mutex<Option<&'static str>>,
}

impl BodyFault {
    pub(crate) fn set(&self, index: u64, reason: &'static str) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            *r = Some(reason);
            self.request.store(index + 1, Ordering::Release);
        }
    }

    /// The fault in request `index`'s body, if the guard found one.
    pub(crate) fn get(&self, index: u64) -> Option<&'static str> {
        if self.request.load(Ordering::Acquire) != index + 1 {
            return None;
        }
        *self.reason.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Chunk sizes from here on are refused: no sane body is that large, and parsers that hold
/// sizes in a signed 64-bit integer read them as negative.
const MAX_CHUNK_SIZE: u64 = 1 << 63;

#[derive(Debug)]
enum Phase {
    Head,
    Body(u64),
    ChunkSize(ChunkLine),
    ChunkData(u64),
    ChunkDataEnd,
    Trailer { line: usize },
    Off,
}

/// Where the guard is in a chunk-size line: `size [; ext [= value]]...`.
#[derive(Debug, Default)]
struct ChunkLine {
    value: u64,
    digits: u8,
    ext: bool,
    quoted: bool,
    escaped: bool,
}

/// Follows request boundaries on one HTTP/1 connection.
#[derive(Debug)]
pub(crate) struct FramingGuard {
    phase: Phase,
    head: Vec<u8>,
    heads: u64,
    limit: usize,
    /// A body fault found and not yet taken: (request index, reason).
    fault: Option<(u64, &'static str)>,
}

impl FramingGuard {
    /// A guard for a connection whose request heads may be up to `limit` bytes.
    pub(crate) fn new(limit: usize) -> FramingGuard {
        FramingGuard {
            phase: Phase::Head,
            head: Vec::new(),
            heads: 0,
            limit,
            fault: None,
        }
    }

    /// Whether a request head has begun and not ended. False once the guard stopped watching
    /// (HTTP/2 included).
    pub(crate) fn head_pending(&self) -> bool {
        matches!(self.phase, Phase::Head) && !self.head.is_empty()
    }

    /// Whether the bytes fed so far end where a request ends (its head, and its body if any).
    pub(crate) fn between_messages(&self) -> bool {
        matches!(self.phase, Phase::Head) && self.head.is_empty()
    }

    /// A fault found in a request body since the last call: (request index, reason).
    pub(crate) fn take_body_fault(&mut self) -> Option<(u64, &'static str)> {
        self.fault.take()
    }

    fn body_fault(&mut self, reason: &'static str) {
        self.fault = Some((self.heads.saturating_sub(1), reason));
        self.phase = Phase::Off;
    }

    /// Feeds bytes read from the client; returns `(index, conflict)` for each ambiguous head.
    pub(crate) fn feed(&mut self, mut data: &[u8]) -> Option<(u64, Conflict)> {
        let mut found = None;
        while !data.is_empty() {
            match &mut self.phase {
                Phase::Off => return found,
                Phase::Head if self.head.is_empty() => {
                    // Fast path: the whole head in this read, scanned in place.
                    match find_end(data, 0) {
                        Some(end) => {
                            let verdict = self.on_head(&data[..end]);
                            data = &data[end..];
                            if let Some(c) = verdict {
                                found.get_or_insert((self.heads - 1, c));
                            }
                        }
                        None => {
                            self.head.extend_from_slice(data);
                            if self.head.len() > self.limit {
                                self.phase = Phase::Off;
                            }
                            return found;
                        }
                    }
                }
                Phase::Head => {
                    let before = self.head.len();
                    // Line ends among the new bytes, with the bytes before them in view (a
                    // terminator split across reads).
                    self.head.extend_from_slice(data);
                    match find_end(&self.head, before) {
                        Some(end) => {
                            let consumed = end - before;
                            data = &data[consumed..];
                            let head = std::mem::take(&mut self.head);
                            let verdict = self.on_head(&head[..end]);
                            self.head = head;
                            self.head.clear();
                            if let Some(c) = verdict {
                                found.get_or_insert((self.heads - 1, c));
                            }
                        }
                        None => {
                            if self.head.len() > self.limit {
                                self.phase = Phase::Off;
                            }
                            return found;
                        }
                    }
                }
                Phase::Body(left) => {
                    let n = (*left).min(data.len() as u64);
                    *left -= n;
                    data = &data[n as usize..];
                    if *left == 0 {
                        self.phase = Phase::Head;
                    }
                }
                Phase::ChunkSize(line) => {
                    let b = data[0];
                    data = &data[1..];
                    let control = (b < 0x20 && b != b'\t' && b != b'\r' && b != b'\n') || b == 0x7f;
                    match b {
                        b'\r' | b'\n' if line.quoted => {
                            self.body_fault("unterminated quoted string in a chunk extension");
                        }
                        b'\n' => {
                            self.phase = if line.value == 0 {
                                Phase::Trailer { line: 0 }
                            } else {
                                Phase::ChunkData(line.value)
                            };
                        }
                        _ if control => {
                            self.body_fault("control character in a chunk extension");
                        }
                        _ if line.quoted => {
                            if line.escaped {
                                line.escaped = false;
                            } else if b == b'\\' {
                                line.escaped = true;
                            } else if b == b'"' {
                                line.quoted = false;
                            }
                        }
                        b'"' if line.ext => line.quoted = true,
                        b';' => line.ext = true,
                        _ if line.ext => {}
                        _ => {
                            if let Some(d) = (b as char).to_digit(16) {
                                line.digits = line.digits.saturating_add(1);
                                line.value = line.value.wrapping_mul(16) | u64::from(d);
                                if line.digits > 16 || line.value >= MAX_CHUNK_SIZE {
                                    self.body_fault("chunk size too large");
                                }
                            }
                        }
                    }
                }
                Phase::ChunkData(left) => {
                    let n = (*left).min(data.len() as u64);
                    *left -= n;
                    data = &data[n as usize..];
                    if *left == 0 {
                        self.phase = Phase::ChunkDataEnd;
                    }
                }
                Phase::ChunkDataEnd => {
                    let b = data[0];
                    data = &data[1..];
                    if b == b'\n' {
                        self.phase = Phase::ChunkSize(ChunkLine::default());
                    }
                }
                Phase::Trailer { line } => {
                    let b = data[0];
                    data = &data[1..];
                    match b {
                        b'\n' if *line == 0 => self.phase = Phase::Head,
                        b'\n' => *line = 0,
                        b'\r' => {}
                        _ => *line += 1,
                    }
                }
            }
        }
        found
    }

    /// Examines one complete head; sets the phase for its body.
    fn on_head(&mut self, head: &[u8]) -> Option<Conflict> {
        if self.heads == 0 && head.starts_with(b"PRI * HTTP/2.0") {
            self.phase = Phase::Off;
            return None;
        }
        self.heads += 1;
        let mut length: Option<u64> = None;
        let mut differing = false;
        let mut chunked = false;
        let mut te = false;
        let mut bad_te = false;
        let mut starts = memchr::memchr_iter(b'\n', head).map(|at| at + 1);
        let mut next = starts.next();
        while let Some(start) = next {
            next = starts.next();
            let line = &head[start..next.map_or(head.len(), |n| n - 1)];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = memchr::memchr(b':', line) else {
                continue;
            };
            let (name, value) = (&line[..colon], &line[colon + 1..]);
            // Only two names matter; most lines are neither (compared by length first).
            if name.len() != 14 && name.len() != 17 {
                continue;
            }
            let value = value.trim_ascii();
            if name.eq_ignore_ascii_case(b"content-length") {
                let parsed = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok());
                match (parsed, length) {
                    (None, _) => {
                        // hyper rejects unparseable lengths; stop following this connection.
                        self.phase = Phase::Off;
                        return None;
                    }
                    (Some(v), Some(prev)) if v != prev => differing = true,
                    (Some(v), _) => length = Some(v),
                }
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                te = true;
                // Across every Transfer-Encoding line: `chunked` once, and last.
                for coding in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    if coding.is_empty() {
                        continue;
                    }
                    if chunked {
                        // Something after chunked, or chunked twice.
                        bad_te = true;
                    }
                    chunked = coding.eq_ignore_ascii_case(b"chunked");
                }
            }
        }
        self.phase = if te && chunked && !bad_te {
            Phase::ChunkSize(ChunkLine::default())
        } else if te {
            Phase::Off
        } else {
            match length {
                Some(0) | None => Phase::Head,
                Some(n) => Phase::Body(n),
            }
        };
        if te && (bad_te || !chunked) {
            Some(Conflict::BadTransferEncoding)
        } else if te && length.is_some() {
            Some(Conflict::LengthAndChunked)
        } else if differing {
            Some(Conflict::DifferingLengths)
        } else {
            None
        }
    }
}

/// Index just past the first `\r\n\r\n`, if any.
/// Where the head that `buf` starts ends (just past its empty line), looking at line ends from
/// `from` on. As httparse (and so hyper, and `direct`) reads heads: a line may end in a bare LF,
/// and empty lines before the request line are skipped. A guard that knew only CRLF CRLF would
/// miss the end of a bare-LF head, and from there misnumber every request of the connection.
fn find_end(buf: &[u8], from: usize) -> Option<usize> {
    let lead = buf
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    let from = from.max(lead);
    // By line ends: a substring searcher's setup costs more than a short head's whole scan.
    memchr::memchr_iter(b'\n', &buf[from..])
        .map(|at| from + at)
        .find(|&at| {
            at > lead
                && (buf[at - 1] == b'\n'
                    || (buf[at - 1] == b'\r' && at - 1 > lead && buf[at - 2] == b'\n'))
        })
        .map(|at| at + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_bodies_and_finds_the_bad_head() {
        let mut g = FramingGuard::new(8192);
        let stream = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab\r\n\r\
POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;ext\r\nabc\r\n0\r\nX-T: 1\r\n\r\n\
GET /c HTTP/1.1\r\nHost: x\r\n\r\n\
POST /d HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        // Byte by byte, to cross every boundary.
        let mut found = None;
        for b in stream.chunks(1) {
            if let Some(f) = g.feed(b) {
                found.get_or_insert(f);
            }
        }
        assert_eq!(found, Some((3, Conflict::LengthAndChunked)));
        let mut g = FramingGuard::new(8192);
        assert_eq!(g.feed(stream), Some((3, Conflict::LengthAndChunked)));
    }

    #[test]
    fn differing_lengths_and_h2() {
        let mut g = FramingGuard::new(8192);
        assert_eq!(
            g.feed(b"POST / HTTP/1.1\r\nContent-Length: 4\r\ncontent-length: 5\r\n\r\n"),
            Some((0, Conflict::DifferingLengths))
        );
        let mut g = FramingGuard::new(8192);
        assert_eq!(g.feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"), None);
    }

    #[test]
    fn transfer_codings_must_end_in_one_chunked() {
        for te in [
            "chunked, chunked",
            "chunked, gzip",
            "gzip",
            "chunked\r\nTransfer-Encoding: chunked",
        ] {
            let mut g = FramingGuard::new(8192);
            let head = format!("POST / HTTP/1.1\r\nTransfer-Encoding: {te}\r\n\r\n");
            assert_eq!(
                g.feed(head.as_bytes()),
                Some((0, Conflict::BadTransferEncoding)),
                "{te}"
            );
        }
        let mut g = FramingGuard::new(8192);
        assert_eq!(
            g.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n"),
            None
        );
    }

    #[test]
    fn body_faults_name_their_request() {
        let ok = b"POST / HTTP/1.1\r\nContent-Length: 1\r\n\r\nx";
        let cases: [(&[u8], &str); 4] = [
            (b"7fffffffffffffff\r\n", ""),
            (b"8000000000000000\r\n", "chunk size too large"),
            (
                b"5;a=\"x\0y\"\r\nhello\r\n0\r\n\r\n",
                "control character in a chunk extension",
            ),
            (
                b"5;a=\"xy\r\nhello\r\n0\r\n\r\n",
                "unterminated quoted string in a chunk extension",
            ),
        ];
        for (body, why) in cases {
            let mut g = FramingGuard::new(8192);
            let mut stream = ok.to_vec();
            stream.extend_from_slice(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
            stream.extend_from_slice(body);
            for b in stream.chunks(1) {
                g.feed(b);
            }
            let found = g.take_body_fault();
            if why.is_empty() {
                assert_eq!(found, None);
            } else {
                assert_eq!(found, Some((1, why)), "{}", String::from_utf8_lossy(body));
            }
        }
        // Quoted strings may hold escaped quotes, and end before the line does.
        let mut g = FramingGuard::new(8192);
        g.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;a=\"q\\\"r\";b\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n");
        assert_eq!(g.take_body_fault(), None);
        assert_eq!(g.heads, 2);
    }
}
