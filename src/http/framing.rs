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
//! It never changes the bytes and stops watching (for good) on anything it does not model:
//! HTTP/2 prior knowledge, oversized heads, unparseable lengths (hyper rejects those itself).

/// The conflict found in a request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Conflict {
    LengthAndChunked,
    DifferingLengths,
}

impl Conflict {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Conflict::LengthAndChunked => "both Content-Length and Transfer-Encoding",
            Conflict::DifferingLengths => "conflicting Content-Length values",
        }
    }
}

#[derive(Debug)]
enum Phase {
    Head,
    Body(u64),
    ChunkSize { value: u64, ext: bool },
    ChunkData(u64),
    ChunkDataEnd,
    Trailer { line: usize },
    Off,
}

/// Follows request boundaries on one HTTP/1 connection.
#[derive(Debug)]
pub(crate) struct FramingGuard {
    phase: Phase,
    head: Vec<u8>,
    heads: u64,
    limit: usize,
}

impl FramingGuard {
    /// A guard for a connection whose request heads may be up to `limit` bytes.
    pub(crate) fn new(limit: usize) -> FramingGuard {
        FramingGuard {
            phase: Phase::Head,
            head: Vec::new(),
            heads: 0,
            limit,
        }
    }

    /// Feeds bytes read from the client; returns `(index, conflict)` for each ambiguous head.
    pub(crate) fn feed(&mut self, mut data: &[u8]) -> Option<(u64, Conflict)> {
        let mut found = None;
        while !data.is_empty() {
            match &mut self.phase {
                Phase::Off => return found,
                Phase::Head if self.head.is_empty() => {
                    // Fast path: the whole head in this read, scanned in place.
                    match find_end(data) {
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
                    // Search from a little before the new bytes for a terminator split across reads.
                    self.head.extend_from_slice(data);
                    let from = before.saturating_sub(3);
                    match find_end(&self.head[from..]) {
                        Some(end) => {
                            let end = from + end;
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
                Phase::ChunkSize { value, ext } => {
                    let b = data[0];
                    data = &data[1..];
                    match b {
                        b'\n' => {
                            self.phase = if *value == 0 {
                                Phase::Trailer { line: 0 }
                            } else {
                                Phase::ChunkData(*value)
                            };
                        }
                        b';' => *ext = true,
                        _ if *ext => {}
                        _ => {
                            if let Some(d) = (b as char).to_digit(16) {
                                match value.checked_mul(16) {
                                    Some(v) => *value = v + d as u64,
                                    None => self.phase = Phase::Off,
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
                        self.phase = Phase::ChunkSize {
                            value: 0,
                            ext: false,
                        };
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
        for line in head.split(|&b| b == b'\n').skip(1) {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
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
                chunked = value
                    .rsplit(|&b| b == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
        }
        self.phase = if te && chunked {
            Phase::ChunkSize {
                value: 0,
                ext: false,
            }
        } else if te {
            Phase::Off
        } else {
            match length {
                Some(0) | None => Phase::Head,
                Some(n) => Phase::Body(n),
            }
        };
        if te && length.is_some() {
            Some(Conflict::LengthAndChunked)
        } else if differing {
            Some(Conflict::DifferingLengths)
        } else {
            None
        }
    }
}

/// Index just past the first `\r\n\r\n`, if any.
fn find_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = buf[from..].iter().position(|&b| b == b'\n') {
        let at = from + i;
        if at >= 3 && &buf[at - 3..=at] == b"\r\n\r\n" {
            return Some(at + 1);
        }
        from = at + 1;
    }
    None
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
}
