//! Structured-field dictionaries (RFC 8941 §4.2.2), as `CDN-Cache-Control` and the targeted
//! cache-control fields are defined (RFC 9213 §2.1).
//!
//! Pure and strict: a value that is not a valid dictionary is an error, and the caller ignores
//! the whole field (a cache must not act on half of a field it could not read). Only what the
//! cache needs is kept of each member: its key and the type (and, for integers and booleans,
//! the value) of its item; parameters are checked and dropped.

/// The item of a dictionary member, as far as caching directives need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Item {
    Integer(i64),
    Boolean(bool),
    /// A decimal, string, token, byte sequence or inner list.
    Other,
}

/// Parses a dictionary; members in order, duplicate keys included (RFC 8941 says the last
/// one counts; the caller applies that).
pub(crate) fn dictionary(input: &str) -> Result<Vec<(String, Item)>, &'static str> {
    let mut p = Parser {
        s: input.as_bytes(),
        i: 0,
    };
    p.skip(b' ');
    let mut out = Vec::new();
    if p.done() {
        return Ok(out);
    }
    loop {
        let key = p.key()?;
        let item = if p.eat(b'=') {
            if p.peek() == Some(b'(') {
                p.inner_list()?;
                Item::Other
            } else {
                p.bare_item()?
            }
        } else {
            Item::Boolean(true)
        };
        p.parameters()?;
        out.push((key, item));
        p.skip_ows();
        if p.done() {
            return Ok(out);
        }
        if !p.eat(b',') {
            return Err("expected a comma between members");
        }
        p.skip_ows();
        if p.done() {
            return Err("trailing comma");
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn done(&self) -> bool {
        self.i >= self.s.len()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn skip(&mut self, b: u8) {
        while self.eat(b) {}
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    fn key(&mut self) -> Result<String, &'static str> {
        let start = self.i;
        match self.peek() {
            Some(b'a'..=b'z' | b'*') => self.i += 1,
            _ => return Err("a key must start with a lower-case letter or '*'"),
        }
        while matches!(
            self.peek(),
            Some(b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' | b'*')
        ) {
            self.i += 1;
        }
        // cannot fail: only ASCII bytes were taken.
        Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    fn parameters(&mut self) -> Result<(), &'static str> {
        while self.eat(b';') {
            self.skip(b' ');
            self.key()?;
            if self.eat(b'=') {
                self.bare_item()?;
            }
        }
        Ok(())
    }

    fn inner_list(&mut self) -> Result<(), &'static str> {
        self.i += 1; // '('
        loop {
            self.skip(b' ');
            if self.eat(b')') {
                return self.parameters();
            }
            self.bare_item()?;
            self.parameters()?;
            match self.peek() {
                Some(b' ' | b')') => {}
                _ => return Err("malformed inner list"),
            }
        }
    }

    fn bare_item(&mut self) -> Result<Item, &'static str> {
        match self.peek() {
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'"') => self.string().map(|()| Item::Other),
            Some(b':') => self.bytes().map(|()| Item::Other),
            Some(b'?') => {
                self.i += 1;
                match self.peek() {
                    Some(b'0') => {
                        self.i += 1;
                        Ok(Item::Boolean(false))
                    }
                    Some(b'1') => {
                        self.i += 1;
                        Ok(Item::Boolean(true))
                    }
                    _ => Err("malformed boolean"),
                }
            }
            Some(b'A'..=b'Z' | b'a'..=b'z' | b'*') => {
                self.i += 1;
                while self
                    .peek()
                    .is_some_and(|b| is_tchar(b) || b == b':' || b == b'/')
                {
                    self.i += 1;
                }
                Ok(Item::Other)
            }
            _ => Err("not an item"),
        }
    }

    fn number(&mut self) -> Result<Item, &'static str> {
        let negative = self.eat(b'-');
        let start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        let int_digits = self.i - start;
        if int_digits == 0 {
            return Err("a number needs digits");
        }
        if self.eat(b'.') {
            if int_digits > 12 {
                return Err("decimal too long");
            }
            let frac = self.i;
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.i += 1;
            }
            if self.i == frac || self.i - frac > 3 {
                return Err("malformed decimal");
            }
            return Ok(Item::Other);
        }
        if int_digits > 15 {
            return Err("integer too long");
        }
        let mut v: i64 = 0;
        for &d in &self.s[start..self.i] {
            v = v * 10 + i64::from(d - b'0');
        }
        Ok(Item::Integer(if negative { -v } else { v }))
    }

    fn string(&mut self) -> Result<(), &'static str> {
        self.i += 1; // '"'
        loop {
            match self.peek() {
                None => return Err("unterminated string"),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    self.i += 1;
                    match self.peek() {
                        Some(b'"' | b'\\') => self.i += 1,
                        _ => return Err("bad escape in string"),
                    }
                }
                Some(0x20..=0x7e) => self.i += 1,
                Some(_) => return Err("control or non-ASCII byte in string"),
            }
        }
    }

    fn bytes(&mut self) -> Result<(), &'static str> {
        self.i += 1; // ':'
        while self
            .peek()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
        {
            self.i += 1;
        }
        if self.eat(b':') {
            Ok(())
        } else {
            Err("unterminated byte sequence")
        }
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_dictionaries() {
        assert_eq!(
            dictionary("max-age=3600, no-store").unwrap(),
            [
                ("max-age".to_string(), Item::Integer(3600)),
                ("no-store".to_string(), Item::Boolean(true))
            ]
        );
        assert_eq!(dictionary("").unwrap(), []);
        assert_eq!(dictionary("  ").unwrap(), []);
        let d = dictionary("foobar, max-age=99999999999;x=1, a=\"s\\\"t\", b=:aGk=:, c=?0, d=(1 2);p, e=1.5, f=tok/en").unwrap();
        assert_eq!(d.len(), 8);
        assert_eq!(d[1], ("max-age".to_string(), Item::Integer(99_999_999_999)));
        assert_eq!(d[4].1, Item::Boolean(false));
    }

    #[test]
    fn invalid_dictionaries() {
        for bad in [
            "max-age=10000, &&&&&",
            "MaX-aGe=10",
            "max-age =100",
            "max-age= 100",
            "max-age=10,",
            "max-age=1234567890123456",
            "a=\"unterminated",
            "a=?2",
            "a=(1 2",
            "a=1.2345",
        ] {
            assert!(dictionary(bad).is_err(), "{bad}");
        }
    }
}
