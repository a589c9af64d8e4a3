//! The store: the memory tier (the only place that knows about moka) and, when configured, the
//! disk tier behind it (`cache::disk`).
//!
//! Maps a primary key to an [`Object`], the set of stored variants of one URL, bounded by the
//! bytes of the variants it holds (`cache_memory`). With a disk tier, every object stored is
//! also written to disk, and a memory miss looks there before it is a miss (a disk hit is put
//! back in memory). Each object expires when its longest-kept
//! variant may no longer be used (see `Entry::keep_for`); until then eviction is moka's
//! TinyLFU by weight. Also keeps short-lived "hit-for-pass" markers for URLs whose responses
//! proved uncacheable, so that requests for them are not queued behind one another.

use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use moka::future::Cache;
use moka::Expiry;

use super::disk::Disk;
use super::entry::{Entry, Target};

/// Variants of one URL kept at most; the oldest goes first.
const MAX_VARIANTS: usize = 32;
/// How long a URL whose response was uncacheable skips request collapsing.
const PASS_TTL: Duration = Duration::from_secs(30);
/// What a hit-for-pass marker costs besides its key (moka's entry and bookkeeping).
const PASS_OVERHEAD: u64 = 160;
/// With a disk tier, an entry larger than this share of `cache_memory` is kept on disk only.
pub(crate) const LARGE_SHARE: u64 = 8;

/// The stored variants of one URL.
#[derive(Debug, Default)]
pub(crate) struct Object {
    variants: Variants,
}

/// One variant inline (nearly every URL has one), more in a boxed slice: a single-variant
/// object takes one allocation fewer than a `Vec` would.
#[derive(Debug)]
enum Variants {
    One(Arc<Entry>),
    Many(Box<[Arc<Entry>]>),
}

impl Default for Variants {
    fn default() -> Variants {
        Variants::Many(Box::new([]))
    }
}

impl Object {
    pub(crate) fn new(variants: Vec<Arc<Entry>>) -> Object {
        let variants = match <[Arc<Entry>; 1]>::try_from(variants) {
            Ok([one]) => Variants::One(one),
            Err(many) => Variants::Many(many.into_boxed_slice()),
        };
        Object { variants }
    }

    /// This object with each body in memory that has no residence given one in `budget`
    /// (bodies read back from the disk tier).
    fn resident_in(self, budget: &Arc<crate::cache::fill::FillBudget>) -> Object {
        let variants = self
            .variants()
            .iter()
            .map(|e| {
                if e.residence.is_some() || e.on_disk.is_some() || e.body.is_empty() {
                    return e.clone();
                }
                let (body, residence) = budget.resident_bytes(e.body.clone());
                Arc::new(e.with_resident_body(body, residence))
            })
            .collect();
        Object::new(variants)
    }

    /// The variants, oldest first.
    pub(crate) fn variants(&self) -> &[Arc<Entry>] {
        match &self.variants {
            Variants::One(e) => std::slice::from_ref(e),
            Variants::Many(v) => v,
        }
    }

    /// The variant stored for a request to `target` with headers like these, if any (RFC 9111
    /// §4.1).
    pub(crate) fn select(&self, req: &http::HeaderMap, target: Target<'_>) -> Option<&Arc<Entry>> {
        // Newest first: a refreshed variant is pushed last.
        self.variants()
            .iter()
            .rev()
            .find(|e| e.matches(req, target))
    }

    fn weight(&self) -> u64 {
        self.variants().iter().map(|e| e.weight()).sum()
    }
}

struct KeepFor;

impl Expiry<String, Arc<Object>> for KeepFor {
    fn expire_after_create(
        &self,
        _: &String,
        value: &Arc<Object>,
        _: StdInstant,
    ) -> Option<Duration> {
        value.variants().iter().map(|e| e.keep_for()).max()
    }

    fn expire_after_update(
        &self,
        _: &String,
        value: &Arc<Object>,
        _: StdInstant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        value.variants().iter().map(|e| e.keep_for()).max()
    }
}

/// `future`'s output if it is ready at its first poll. Dropped otherwise: moka's futures may
/// be dropped at any await (it keeps what it had started for its next call). Taken pinned
/// where it was made (`pin!(make())`): taken by value, the ~900-byte future was copied once
/// more into the pin (about 100 instructions a lookup).
fn now_or_never<F: std::future::Future>(future: std::pin::Pin<&mut F>) -> Option<F::Output> {
    match future.poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(out) => Some(out),
        std::task::Poll::Pending => None,
    }
}

/// Which tier answered a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tier {
    Memory,
    Disk,
}

impl Tier {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Tier::Memory => "memory",
            Tier::Disk => "disk",
        }
    }
}

/// `old` leaves the store for `new`: responses that still hold its body count it in the
/// fills' budget (see `fill::Residence`), unless `new` keeps the same body (a revalidation).
/// The eviction listener does this for whole objects, but not for a replaced one, whose
/// successor keeps most of its variants.
fn let_go(old: &Entry, new: &Entry) {
    if let Some(r) = &old.residence {
        let kept = new.residence.as_ref().is_some_and(|n| Arc::ptr_eq(n, r));
        if !kept {
            r.pin();
        }
    }
}

/// The byte-bounded object store.
pub(crate) struct Store {
    objects: Cache<String, Arc<Object>>,
    passes: Cache<String, ()>,
    disk: Option<Disk>,
    /// While set, the disk tier is not read (a restarted edge has not yet heard the cluster's
    /// purges: what it kept from before may have been purged meanwhile).
    disk_held: std::sync::atomic::AtomicBool,
    /// Bytes the memory tier holds at most.
    capacity: u64,
    /// Where bodies read back from the disk into memory count once the store lets them go
    /// while responses still hold them, as fills' bodies do (see `fill::Residence`).
    read_back: Option<Arc<crate::cache::fill::FillBudget>>,
}

impl Store {
    /// A store holding at most `capacity` bytes of stored responses in memory, and `disk`
    /// behind it.
    pub(crate) fn new(capacity: u64, disk: Option<Disk>) -> Store {
        crate::memory::watch(capacity);
        let objects = Cache::builder()
            .max_capacity(capacity)
            .weigher(|key: &String, value: &Arc<Object>| {
                u32::try_from(key.len() as u64 + value.weight()).unwrap_or(u32::MAX)
            })
            .expire_after(KeepFor)
            .eviction_listener(|key, value: Arc<Object>, cause| {
                // A replaced object shares most of its variants with its successor.
                if cause != moka::notification::RemovalCause::Replaced {
                    crate::memory::released(key.len() as u64 + value.weight());
                    // Responses may still hold the bodies: from now on they count in the
                    // fills' budget until they are dropped (nothing if none is held).
                    for v in value.variants() {
                        if let Some(r) = &v.residence {
                            r.pin();
                        }
                    }
                }
            })
            .build();
        // Markers come from responses that are not stored (a flood of unique 404s makes one per
        // URL): bounded by bytes too, a sixteenth of the cache's, at least 1 MiB.
        let passes = Cache::builder()
            .max_capacity((capacity / 16).max(1 << 20))
            .weigher(|key: &String, (): &()| {
                u32::try_from(key.len() as u64 + PASS_OVERHEAD).unwrap_or(u32::MAX)
            })
            .time_to_live(PASS_TTL)
            .build();
        Store {
            objects,
            passes,
            disk,
            disk_held: std::sync::atomic::AtomicBool::new(false),
            capacity,
            read_back: None,
        }
    }

    /// This store, its bodies read back from disk counted in `budget` once let go while held.
    pub(crate) fn counting_read_backs_in(
        mut self,
        budget: Arc<crate::cache::fill::FillBudget>,
    ) -> Store {
        self.read_back = Some(budget);
        self
    }

    /// Whether an object of `len` bytes is kept on disk only (there is a disk tier, and it
    /// is too large for memory).
    pub(crate) fn disk_only(&self, len: u64) -> bool {
        self.disk.is_some() && len > self.capacity / LARGE_SHARE
    }

    /// Holds reads from the disk tier (`true`) or lets them go on (`false`).
    pub(crate) fn hold_disk(&self, held: bool) {
        self.disk_held
            .store(held, std::sync::atomic::Ordering::Relaxed);
    }

    /// The disk tier, if there is one.
    pub(crate) fn disk(&self) -> Option<&Disk> {
        self.disk.as_ref()
    }

    /// The object stored for `key`, and the tier it came from.
    pub(crate) async fn get(&self, key: &str) -> Option<(Arc<Object>, Tier)> {
        // moka's lookup is done at its first poll unless it has to wait for another thread's
        // housekeeping. Polled here, its future (about 900 bytes, with the housekeeping it may
        // run) is no part of this one's, which is part of every request's, which hyper moves
        // at least once per request; the rare wait goes to a boxed future.
        let found = match now_or_never(std::pin::pin!(self.objects.get(key))) {
            Some(found) => found,
            None => Box::pin(self.objects.get(key)).await,
        };
        if let Some(o) = found {
            let broken = o
                .variants()
                .iter()
                .any(|e| e.on_disk.as_ref().is_some_and(|d| d.is_broken()));
            if !broken {
                return Some((o, Tier::Memory));
            }
            // A chunk of its body on disk was found missing: look again (the disk tier no
            // longer has it whole either). Boxed: rare, and large.
            Box::pin(self.objects.remove(key)).await;
        }
        self.get_beyond_memory(key).await
    }

    /// What memory holds for `key`, if moka can say at once: `Some(None)` when it holds
    /// nothing; `None` when it cannot say without waiting or holds an object with a chunk on
    /// disk found missing ([`get`](Self::get) sees to those).
    pub(crate) fn get_memory(&self, key: &str) -> Option<Option<Arc<Object>>> {
        let Some(o) = now_or_never(std::pin::pin!(self.objects.get(key)))? else {
            return Some(None);
        };
        let broken = o
            .variants()
            .iter()
            .any(|e| e.on_disk.as_ref().is_some_and(|d| d.is_broken()));
        (!broken).then_some(Some(o))
    }

    /// [`get`](Self::get) for a key memory was just found not to hold: the disk tier.
    pub(crate) async fn get_beyond_memory(&self, key: &str) -> Option<(Arc<Object>, Tier)> {
        // Without a disk tier, nothing to box: every miss and pass-through comes here.
        if self.disk.is_none() || self.disk_held.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        // Boxed: the disk read's state machine is large, and this future is part of every
        // request's that waits, which hyper moves and h2 spawns per request.
        Box::pin(self.read_disk(key)).await
    }

    async fn read_disk(&self, key: &str) -> Option<(Arc<Object>, Tier)> {
        let mut object = self.disk.as_ref()?.get(key).await?;
        if let Some(budget) = &self.read_back {
            object = object.resident_in(budget);
        }
        let object = Arc::new(object);
        self.objects.insert(key.to_string(), object.clone()).await;
        Some((object, Tier::Disk))
    }

    /// Stores `entry` as a variant of `key`, replacing the same variant if present.
    pub(crate) async fn insert(&self, key: String, entry: Arc<Entry>) {
        // Rarely marked: a look (a hash and a read) costs a fraction of a removal.
        if self.passes.contains_key(&key) {
            self.passes.invalidate(&key).await;
        }
        if let Some(disk) = &self.disk {
            if entry.weight() > self.capacity / LARGE_SHARE {
                // Too large to keep in memory: on disk only, read from there in chunks.
                let mut variants: Vec<Arc<Entry>> = match self.objects.remove(&key).await {
                    Some(o) => o
                        .variants()
                        .iter()
                        .filter(|v| !v.same_variant(&entry))
                        .cloned()
                        .collect(),
                    None => Vec::new(),
                };
                if variants.len() >= MAX_VARIANTS {
                    variants.remove(0);
                }
                variants.push(entry);
                disk.put(&key, &Object::new(variants)).await;
                return;
            }
        }
        let stored = self
            .objects
            .entry(key.clone())
            .and_upsert_with(|existing| {
                let mut variants: Vec<Arc<Entry>> = existing
                    .map(|e| {
                        e.into_value()
                            .variants()
                            .iter()
                            .filter(|v| {
                                let replaced = v.same_variant(&entry);
                                if replaced {
                                    let_go(v, &entry);
                                }
                                !replaced
                            })
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                if variants.len() >= MAX_VARIANTS {
                    let_go(&variants.remove(0), &entry);
                }
                variants.push(entry);
                std::future::ready(Arc::new(Object::new(variants)))
            })
            .await;
        if let Some(disk) = &self.disk {
            disk.put(&key, stored.value()).await;
        }
    }

    /// Removes every variant of `key`. Returns whether anything was stored (in memory).
    pub(crate) async fn invalidate(&self, key: &str) -> bool {
        if let Some(disk) = &self.disk {
            disk.remove(key);
        }
        // Most keys an unsafe method names are not stored: a look (a hash and a read, about 300
        // instructions) instead of a removal (about 800: moka takes a lock of the key's own for
        // the eviction listener). An entry past its time is not seen, and is not served either.
        if !self.objects.contains_key(key) {
            return false;
        }
        self.objects.remove(key).await.is_some()
    }

    /// Purges every variant of `key`, on disk too and across restarts.
    ///
    /// The rule is in force in this process before memory lets go of anything (so no read
    /// from disk brings a purged object back); if it cannot be written to disk (a full disk),
    /// the purge still holds until a restart and the error says so.
    ///
    /// `issued_ms`: when a cluster purge was issued (see [`Disk::ban_url`]).
    pub(crate) async fn purge(&self, key: &str, issued_ms: Option<u64>) -> std::io::Result<bool> {
        let recorded = self
            .disk
            .as_ref()
            .map_or(Ok(()), |d| d.ban_url(key, issued_ms));
        let n = self.objects.remove(key).await.is_some();
        recorded.map(|()| n)
    }

    /// Purges every object whose key starts with `prefix`; returns how many were in memory.
    pub(crate) async fn purge_prefix(
        &self,
        prefix: &str,
        issued_ms: Option<u64>,
    ) -> std::io::Result<usize> {
        let recorded = self
            .disk
            .as_ref()
            .map_or(Ok(()), |d| d.ban_prefix(prefix, issued_ms));
        let n = self.invalidate_prefix(prefix).await;
        recorded.map(|()| n)
    }

    /// Purges every object with a variant tagged `tag`; returns how many were in memory.
    pub(crate) async fn purge_tag(
        &self,
        tag: &str,
        issued_ms: Option<u64>,
    ) -> std::io::Result<usize> {
        let recorded = self
            .disk
            .as_ref()
            .map_or(Ok(()), |d| d.ban_tag(tag, issued_ms));
        let n = self.invalidate_tag(tag).await;
        recorded.map(|()| n)
    }

    /// Removes every object in memory whose key starts with `prefix`; returns how many.
    async fn invalidate_prefix(&self, prefix: &str) -> usize {
        let keys: Vec<Arc<String>> = self
            .objects
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k)
            .collect();
        self.remove_all(keys).await
    }

    /// Removes every object in memory with a variant tagged `tag` (from `Surrogate-Key`);
    /// returns how many.
    async fn invalidate_tag(&self, tag: &str) -> usize {
        let keys: Vec<Arc<String>> = self
            .objects
            .iter()
            .filter(|(_, o)| {
                o.variants()
                    .iter()
                    .any(|e| e.tags.iter().any(|t| **t == *tag))
            })
            .map(|(k, _)| k)
            .collect();
        self.remove_all(keys).await
    }

    async fn remove_all(&self, keys: Vec<Arc<String>>) -> usize {
        let mut n = 0;
        for k in keys {
            if self.objects.remove(k.as_str()).await.is_some() {
                n += 1;
            }
        }
        // moka keeps what it removed in its write log until its next housekeeping; run it, so
        // the memory is free by the time the caller hands it back to the system.
        self.objects.run_pending_tasks().await;
        n
    }

    /// Marks `key` as uncacheable for a while: requests for it skip collapsing.
    pub(crate) async fn mark_pass(&self, key: String) {
        self.passes.insert(key, ()).await;
    }

    pub(crate) async fn is_pass(&self, key: &str) -> bool {
        self.passes.contains_key(key)
    }

    /// Stored (bytes, objects), after applying pending bookkeeping.
    pub(crate) async fn usage(&self) -> (u64, u64) {
        self.objects.run_pending_tasks().await;
        (self.objects.weighted_size(), self.objects.entry_count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(lifetime: u64) -> Arc<Entry> {
        let mut e = Entry::for_test(
            bytes::Bytes::from_static(b"x"),
            Duration::from_secs(lifetime),
        );
        e.tags = Box::new(["t".into()]);
        Arc::new(e)
    }

    /// A replaced version whose body a client still holds counts in the fills' budget until
    /// the client lets go; a revalidated one (the same body) does not.
    #[tokio::test]
    async fn a_replaced_body_still_held_counts_in_the_fills_budget() {
        let budget = crate::cache::fill::FillBudget::new(1 << 20);
        let store = Store::new(1 << 20, None);
        let version = |n: usize| {
            let (body, residence) = budget.resident(vec![b'v'; n]);
            Arc::new(
                Entry::for_test(bytes::Bytes::new(), Duration::from_secs(60))
                    .with_resident_body(body, residence),
            )
        };
        let first = version(1000);
        let held = first.body.clone();
        store.insert("k".into(), first.clone()).await;
        // Revalidated: a new entry with the same body.
        let refreshed = Arc::new(Entry {
            residence: first.residence.clone(),
            ..Entry::for_test(first.body.clone(), Duration::from_secs(60))
        });
        drop(first);
        store.insert("k".into(), refreshed).await;
        assert_eq!(budget.held(), 0, "the same body, still in the store");
        store.insert("k".into(), version(10)).await;
        assert_eq!(budget.held(), 1000, "replaced while a client holds it");
        drop(held);
        store.objects.run_pending_tasks().await;
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn now_or_never_takes_only_what_is_ready_at_once() {
        assert_eq!(now_or_never(std::pin::pin!(async { 7 })), Some(7));
        let mut polled = false;
        let later = std::future::poll_fn(|cx| {
            if polled {
                std::task::Poll::Ready(7)
            } else {
                polled = true;
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            }
        });
        assert_eq!(now_or_never(std::pin::pin!(later)), None);
    }

    #[tokio::test]
    async fn storing_a_key_clears_its_pass_mark_and_invalidating_removes_it() {
        let store = Store::new(1 << 20, None);
        store.mark_pass("k".into()).await;
        assert!(store.is_pass("k").await);
        store.insert("k".into(), entry(60)).await;
        assert!(!store.is_pass("k").await, "a stored answer ends the pass");
        assert!(store.get("k").await.is_some());
        assert!(!store.invalidate("other").await, "nothing stored there");
        assert!(store.invalidate("k").await);
        assert!(store.get("k").await.is_none());
        assert!(!store.invalidate("k").await, "gone already");
    }

    #[tokio::test]
    async fn stale_entries_are_kept_for_a_while() {
        let store = Store::new(1 << 20, None);
        store.insert("k".into(), entry(1)).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(store.get("k").await.is_some());
        assert_eq!(store.purge_tag("t", None).await.unwrap(), 1);
        assert!(store.get("k").await.is_none());
    }
}
