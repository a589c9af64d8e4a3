//! The header maps of the entries a thread answers from, kept per thread and cloned per hit.
//!
//! A hit's header map was built from the entry's stored fields each time: a hash and a probe
//! per field (about 3,700 of 26,000 user-space instructions for a 1 KiB hit over HTTP/1.1,
//! callgrind), and every value a slice of the entry's one buffer, whose reference count the
//! hits of every thread then moved between cores twice per field. Here a thread keeps, for the
//! entries it has answered from twice in a row in one of its [`SLOTS`] slots (chosen by the
//! entry's address), a map with `Age` and `Cache-Status` already in place and values in a
//! buffer of its own. A hit clones it (no hashing) and sets those two fields.
//!
//! Bounded: [`SLOTS`] maps a thread, each of an entry whose values are at most [`MAX_VALUES`]
//! bytes (a larger one is built each time, as before). A slot holds a weak reference to its
//! entry: an evicted entry's fields are freed with it, only its allocation's shell (and the
//! slot's map) stay until the slot is taken by another entry. The weak reference is also what
//! makes the address a safe key: while it is held, no other entry can be given that address.

use std::cell::RefCell;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue};

use super::headers::CACHE_STATUS;
use crate::cache::entry::Entry;

/// Maps a thread keeps.
pub(crate) const SLOTS: usize = 64;

/// Fields a response's map has room for besides the entry's: `Age` and `Cache-Status`, and two
/// more (`Alt-Svc`, `Content-Range`). A map that is full grows (allocates and rehashes
/// everything) at its next insert, even of a name it already holds; a clone keeps the table.
pub(crate) const ROOM: usize = 4;

/// Entries with more bytes of values than this get no kept map.
pub(crate) const MAX_VALUES: usize = 4096;

struct Slot {
    entry: Weak<Entry>,
    map: Option<HeaderMap>,
    /// The fields as HTTP/1.1 header lines (see [`lines`]), and whether they hold a `Date`.
    lines: Option<(Bytes, bool)>,
}

thread_local! {
    static KEPT: RefCell<Vec<Slot>> = RefCell::new(
        (0..SLOTS).map(|_| Slot { entry: Weak::new(), map: None, lines: None }).collect(),
    );
}

fn slot_of(entry: *const Entry) -> usize {
    // Fibonacci hashing of the address: its low bits are alignment, its high bits alike.
    ((entry as usize as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % SLOTS
}

/// `entry`'s fields as a header map with room for (or already holding) `Age` and
/// `Cache-Status`, which the caller sets.
pub(crate) fn of(entry: &Arc<Entry>) -> HeaderMap {
    if entry.headers.values_len() > MAX_VALUES {
        return entry.headers.to_map(ROOM);
    }
    let at = Arc::as_ptr(entry);
    KEPT.with(|kept| {
        let Ok(mut kept) = kept.try_borrow_mut() else {
            return entry.headers.to_map(ROOM);
        };
        let slot = &mut kept[slot_of(at)];
        // The slot's weak reference holds the allocation, so an equal address is this entry.
        if std::ptr::eq(slot.entry.as_ptr(), at) {
            return slot
                .map
                .get_or_insert_with(|| {
                    let mut map = entry.headers.to_map_detached(ROOM);
                    map.insert(header::AGE, HeaderValue::from_static("0"));
                    map.insert(CACHE_STATUS, HeaderValue::from_static("meridian"));
                    map
                })
                .clone();
        }
        // Another entry's slot, or a free one: note this entry, and keep a map for it if it
        // comes again before another takes the slot.
        slot.entry = Arc::downgrade(entry);
        slot.map = None;
        slot.lines = None;
        entry.headers.to_map(ROOM)
    })
}

/// `entry`'s fields as HTTP/1.1 header lines, on the same terms as [`of`]'s maps: kept from an
/// entry's second answer in a row on this thread, `None` before (the caller builds a map).
/// Without `Age`, `Cache-Status` and `Content-Length`, which the writer adds; `None` for good
/// for fields that carry connection framing (`Connection`, `Transfer-Encoding`: never stored,
/// so never met). Says whether the lines hold a `Date`.
pub(crate) fn lines(entry: &Arc<Entry>) -> Option<(Bytes, bool)> {
    if entry.headers.values_len() > MAX_VALUES {
        return None;
    }
    let at = Arc::as_ptr(entry);
    KEPT.with(|kept| {
        let mut kept = kept.try_borrow_mut().ok()?;
        let slot = &mut kept[slot_of(at)];
        if !std::ptr::eq(slot.entry.as_ptr(), at) {
            slot.entry = Arc::downgrade(entry);
            slot.map = None;
            slot.lines = None;
            return None;
        }
        if slot.lines.is_none() {
            let mut out = Vec::with_capacity(entry.headers.values_len() + 32 * entry.headers.len());
            let mut dated = false;
            for (name, value) in entry.headers.iter() {
                match *name {
                    header::AGE | header::CONTENT_LENGTH => continue,
                    header::CONNECTION | header::TRANSFER_ENCODING => return None,
                    header::DATE => dated = true,
                    _ if name == CACHE_STATUS => continue,
                    _ => {}
                }
                out.extend_from_slice(name.as_str().as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(value.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            slot.lines = Some((Bytes::from(out), dated));
        }
        slot.lines.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::Fields;
    use std::time::Duration;

    fn entry(fields: &[(&str, &str)]) -> Arc<Entry> {
        let mut map = HeaderMap::new();
        for (n, v) in fields {
            map.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let mut e = Entry::for_test(Bytes::from_static(b"x"), Duration::from_secs(60));
        e.headers = Fields::new(&map);
        Arc::new(e)
    }

    fn lines(map: &HeaderMap) -> Vec<(String, String)> {
        map.iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect()
    }

    /// The kept map, cloned, is the built one with the two fields the caller sets, in the
    /// same order, from the second answer on.
    #[test]
    fn a_kept_map_is_the_fields_in_order() {
        let e = entry(&[
            ("content-type", "text/plain"),
            ("x-custom", "a"),
            ("cache-control", "max-age=60"),
            ("x-custom", "b"),
            ("cache-status", "upstream; hit"),
        ]);
        let mut built = e.headers.to_map(2);
        built.insert(header::AGE, HeaderValue::from_static("7"));
        built.insert(CACHE_STATUS, HeaderValue::from_static("meridian; hit"));
        for _ in 0..3 {
            let mut map = of(&e);
            map.insert(header::AGE, HeaderValue::from_static("7"));
            map.insert(CACHE_STATUS, HeaderValue::from_static("meridian; hit"));
            assert_eq!(lines(&map), lines(&built));
        }
        let slot = KEPT.with(|k| k.borrow()[slot_of(Arc::as_ptr(&e))].map.is_some());
        assert!(slot, "kept from the second answer on");
    }

    /// Entries that share a slot each get their own fields, also once one was dropped and a new
    /// one may come at its address.
    #[test]
    fn every_entry_gets_its_own_fields_whatever_its_slot() {
        for round in 0..(4 * SLOTS) {
            let value = format!("v{round}");
            let e = entry(&[("etag", &value)]);
            for _ in 0..2 {
                let map = of(&e);
                assert_eq!(map.get(header::ETAG).unwrap(), value.as_str());
            }
        }
    }

    /// A map is not kept for an entry whose values are past the bound.
    #[test]
    fn large_fields_are_built_each_time() {
        let big = "x".repeat(MAX_VALUES + 1);
        let e = entry(&[("x-big", &big)]);
        for _ in 0..3 {
            assert_eq!(of(&e).get("x-big").unwrap(), big.as_str());
        }
        let kept = KEPT.with(|k| k.borrow()[slot_of(Arc::as_ptr(&e))].map.is_some());
        assert!(!kept);
    }

    /// A response's map, built or kept, takes the fields a hit adds without growing (a full
    /// map allocates and rehashes at its next insert).
    #[test]
    fn a_hits_map_has_room_for_what_a_hit_adds() {
        let names = [
            "server",
            "date",
            "content-type",
            "content-length",
            "last-modified",
            "accept-ranges",
            "etag",
            "expires",
            "cache-control",
            "via",
        ];
        let fields: Vec<(&str, &str)> = names.iter().map(|n| (*n, "v")).collect();
        let e = entry(&fields);
        for answer in 0..3 {
            let mut map = of(&e);
            let capacity = map.capacity();
            map.insert(header::AGE, HeaderValue::from_static("1"));
            map.insert(CACHE_STATUS, HeaderValue::from_static("meridian; hit"));
            map.insert(header::ALT_SVC, HeaderValue::from_static("h3=\":443\""));
            map.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_static("bytes 0-0/1"),
            );
            assert_eq!(map.capacity(), capacity, "answer {answer}");
        }
    }
}
