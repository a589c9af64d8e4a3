//! Purges by URL, URL prefix or `Surrogate-Key` tag: on this edge, and through gossip on every
//! edge of the cluster.
//!
//! A node that gossips and is asked to purge (`POST /purge`, any role) puts the purge in its own
//! gossip state as `purge/<issue time>` (see [`crate::gossip::Gossip::issue_purge`]); every
//! edge's [`follow`] task reads the purges gossip holds, applies the ones it has not (in issue
//! order, idempotently) and publishes, per issuer, the issue time of the latest it applied.
//! Gossip hands a node's keys over in the order they were set, so that watermark says exactly
//! which of the issuer's purges an edge has applied: `GET /purge/{id}` reads it off every edge.
//!
//! The issuer also pushes each purge to every live edge it knows at once (a signed `POST` to the
//! edge's peer listener, see `shield`), which applies it without waiting for gossip's rounds;
//! gossip stays the path that every edge eventually gets it by, and the watermark moves only
//! with it. The issuer counts the edges that answered, for `GET /purge/{id}`.
//!
//! An edge that starts with a disk tier holds reads from disk until it has caught up with the
//! cluster's purges (what it kept may have been purged while it was down); it serves from
//! memory and the origin meanwhile. The issuer removes its purges from gossip after
//! `gossip.purge_retention`.
//!
//! Hazard: purges travel in the sealed gossip state, so only key holders can issue them; a
//! purge names URLs by host, and an edge applies it to the site serving that host, if any.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{StatusCode, Uri};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::cache::key;
use crate::gossip::Gossip;
use crate::http::handler::EdgeState;

/// What a purge removes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Purge {
    /// One URL (every variant of it).
    Url(String),
    /// Every URL that starts with this one.
    Prefix(String),
    /// Every object tagged so by its origin (`Surrogate-Key`).
    Tag(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    url: Option<String>,
    prefix: Option<String>,
    tag: Option<String>,
}

fn absolute(text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if uri.host().is_none() {
        return Err(format!(
            "{text:?} must be an absolute URL (http://host/path)"
        ));
    }
    Ok(uri)
}

impl Purge {
    /// Reads a purge request body (`{"url"|"prefix"|"tag": "..."}`), checked as far as any
    /// node can: URLs absolute, a tag not empty.
    pub(crate) fn parse(body: &[u8]) -> Result<Purge, String> {
        let r: PurgeRequest = serde_json::from_slice(body)
            .map_err(|e| format!("expected {{\"url\"|\"prefix\"|\"tag\": \"...\"}}: {e}"))?;
        let p = match (r.url, r.prefix, r.tag) {
            (Some(u), None, None) => Purge::Url(u),
            (None, Some(p), None) => Purge::Prefix(p),
            (None, None, Some(t)) if !t.trim().is_empty() => Purge::Tag(t.trim().to_string()),
            _ => return Err("give exactly one of \"url\", \"prefix\" or \"tag\"".into()),
        };
        match &p {
            Purge::Url(u) | Purge::Prefix(u) => {
                absolute(u)?;
            }
            Purge::Tag(_) => {}
        }
        Ok(p)
    }
}

/// Why a purge could not be applied here: the status and the message for the API.
pub(crate) type Refused = (StatusCode, String);

/// A purge that could not be recorded for the disk tier: it holds until a restart, and the
/// request fails so that the operator knows it may not hold after one.
fn on_disk(e: std::io::Error) -> Refused {
    tracing::error!(error = %e, "a purge could not be recorded on disk");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("purged, but the purge could not be recorded on disk ({e}): purged objects on disk may come back after a restart"),
    )
}

/// Applies `purge` to this edge's store; how many objects memory held. `issued_ms`: when a
/// cluster purge was issued. A URL of a host no site here serves is an error for a purge of
/// this edge alone (`strict`), and nothing to do for a cluster purge (another edge may serve
/// it).
pub(crate) async fn apply(
    edge: &EdgeState,
    purge: &Purge,
    issued_ms: Option<u64>,
    strict: bool,
) -> Result<usize, Refused> {
    let site_of = |text: &str| -> Result<Option<(Arc<crate::http::handler::Site>, Uri)>, Refused> {
        let uri = absolute(text).map_err(|e| (StatusCode::BAD_REQUEST, e))?;
        let host = uri.host().unwrap_or_default();
        match edge.sites.load().lookup(host).cloned() {
            Some(site) => Ok(Some((site, uri))),
            None if strict => Err((
                StatusCode::BAD_REQUEST,
                format!("no site serves host {host:?}"),
            )),
            None => Ok(None),
        }
    };
    let at_ms = issued_ms.unwrap_or_else(unix_now_ms);
    let n = match purge {
        Purge::Url(url) => match site_of(url)? {
            Some((site, uri)) => {
                let key = site.key(&uri);
                edge.recent_purges.note(at_ms, Rule::Key(key.clone()));
                usize::from(edge.store.purge(&key, issued_ms).await.map_err(on_disk)?)
            }
            None => 0,
        },
        Purge::Prefix(prefix) => match site_of(prefix)? {
            Some((site, uri)) => {
                let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
                let prefix = key::prefix(&site.name, path);
                edge.recent_purges.note(at_ms, Rule::Prefix(prefix.clone()));
                edge.store
                    .purge_prefix(&prefix, issued_ms)
                    .await
                    .map_err(on_disk)?
            }
            None => 0,
        },
        Purge::Tag(tag) => {
            edge.recent_purges.note(at_ms, Rule::Tag(tag.clone()));
            edge.store
                .purge_tag(tag, issued_ms)
                .await
                .map_err(on_disk)?
        }
    };
    edge.metrics.purged.increment(n as u64);
    if n > 0 {
        // What was purged is freed now; hand the pages back without waiting.
        tokio::task::spawn_blocking(crate::memory::trim);
    }
    Ok(n)
}

/// The id of a cluster purge: its issue time and its issuer, `<unix ms>.<node id>`.
pub(crate) fn id(at_ms: u64, issuer: &str) -> String {
    format!("{at_ms}.{issuer}")
}

/// Reads a purge id back: (issue time, issuer).
pub(crate) fn parse_id(id: &str) -> Option<(u64, &str)> {
    let (at, issuer) = id.split_once('.')?;
    if issuer.is_empty() {
        return None;
    }
    Some((at.parse().ok()?, issuer))
}

fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What a recent purge removed: a cache key, the keys that start with a prefix, or the objects
/// with a tag.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Rule {
    Key(String),
    Prefix(String),
    Tag(String),
}

/// How long an edge remembers a purge after applying it, for judging the copies its peers hand
/// it ([`Recent`]): far longer than a purge takes to reach every live edge.
const RECENT_FOR_MS: u64 = 10 * 60 * 1000;

/// Most purges an edge remembers for that.
const MAX_RECENT: usize = 10_000;

/// A purge applied here: when (here), when it was issued, and what it removed.
struct Applied {
    noted_ms: u64,
    issued_ms: u64,
    rule: Rule,
}

/// The purges this edge applied lately, with when each was issued: a peer that has not applied
/// one yet (its push was lost, gossip is a round behind) still holds the purged copy, and would
/// hand it back to an edge that has, which would then serve it until it expired. So a stored
/// copy from a peer that may have left the origin before a purge this edge applied to it is not
/// used: the edge asks the origin instead (`meridian_peer_requests_total{result="purged"}`).
#[derive(Default)]
pub(crate) struct Recent(std::sync::Mutex<std::collections::VecDeque<Applied>>);

impl Recent {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<Applied>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether no purge was applied here lately (what a shielded miss checks first).
    pub(crate) fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Notes a purge applied here now, issued at `issued_ms`.
    pub(crate) fn note(&self, issued_ms: u64, rule: Rule) {
        self.note_at(unix_now_ms(), issued_ms, rule);
    }

    /// Kept in issue order (purges are rare; a shielded miss reads only those issued after
    /// its copy left the origin).
    fn note_at(&self, now_ms: u64, issued_ms: u64, rule: Rule) {
        let mut q = self.lock();
        let oldest = now_ms.saturating_sub(RECENT_FOR_MS);
        q.retain(|a| a.noted_ms >= oldest);
        let at = q.partition_point(|a| a.issued_ms <= issued_ms);
        q.insert(
            at,
            Applied {
                noted_ms: now_ms,
                issued_ms,
                rule,
            },
        );
        while q.len() > MAX_RECENT {
            q.pop_front();
        }
    }

    /// Whether a copy of `key` tagged `tags`, which left the origin no earlier than
    /// `earliest_ms` (see [`left_origin`]), may have left it before a purge applied here that
    /// covers it.
    pub(crate) fn predates(&self, key: &str, tags: &[Box<str>], earliest_ms: u64) -> bool {
        let q = self.lock();
        if q.is_empty() {
            return false;
        }
        q.iter()
            .rev()
            .take_while(|a| earliest_ms <= a.issued_ms)
            .any(|a| match &a.rule {
                Rule::Key(k) => k == key,
                Rule::Prefix(p) => key.starts_with(p.as_str()),
                Rule::Tag(t) => tags.iter().any(|x| **x == **t),
            })
    }
}

/// How far apart the edges' clocks may be, for [`left_origin`].
const CLOCK_SLACK_MS: u64 = 250;

/// The earliest a peer's stored copy may have left the origin, from its answer's
/// `Meridian-Fetched` (milliseconds, on the peer's clock: less [`CLOCK_SLACK_MS`]), or from its
/// `Age` (whole seconds: less a second). A copy that left just after a purge may be judged to
/// predate it, and is fetched again; one from before it never passes.
pub(crate) fn left_origin(fetched_ms: Option<u64>, age: Duration) -> u64 {
    match fetched_ms {
        Some(ms) => ms.saturating_sub(CLOCK_SLACK_MS),
        None => unix_now_ms().saturating_sub(age.as_millis() as u64 + 1000),
    }
}

/// Most pushed purges an edge remembers until gossip brings them.
const MAX_PUSHED: usize = 10_000;

/// Cluster purges pushed to this edge by their issuer ahead of gossip: applied at once, and
/// not again when gossip brings them (which then only moves the watermark).
#[derive(Default)]
pub(crate) struct Pushed(std::sync::Mutex<std::collections::BTreeSet<(u64, String)>>);

impl Pushed {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<(u64, String)>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a purge applied here ahead of gossip (pushed, or issued here); false if it was
    /// already.
    pub(crate) fn insert(&self, at_ms: u64, issuer: &str) -> bool {
        let mut set = self.lock();
        let new = set.insert((at_ms, issuer.to_string()));
        while set.len() > MAX_PUSHED {
            set.pop_first();
        }
        new
    }

    /// Whether gossip's record was pushed here before (forgotten from then on).
    fn take(&self, at_ms: u64, issuer: &str) -> bool {
        self.lock().remove(&(at_ms, issuer.to_string()))
    }
}

/// Which edges answered the pushes of this node's latest purges (for `GET /purge/{id}`).
#[derive(Default)]
pub(crate) struct Acks(std::sync::Mutex<std::collections::VecDeque<(u64, Vec<String>)>>);

/// Purges whose acknowledgements an issuer keeps.
const MAX_ACKED: usize = 1000;

impl Acks {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<(u64, Vec<String>)>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Notes that `edge` applied this node's purge issued at `at_ms`.
    pub(crate) fn add(&self, at_ms: u64, edge: &str) {
        let mut q = self.lock();
        match q.iter_mut().find(|(at, _)| *at == at_ms) {
            Some((_, edges)) => edges.push(edge.to_string()),
            None => {
                q.push_back((at_ms, vec![edge.to_string()]));
                if q.len() > MAX_ACKED {
                    q.pop_front();
                }
            }
        }
    }

    /// Whether `edge` answered that it applied this node's purge issued at `at_ms`.
    pub(crate) fn has(&self, at_ms: u64, edge: &str) -> bool {
        self.lock()
            .iter()
            .any(|(at, edges)| *at == at_ms && edges.iter().any(|e| e == edge))
    }
}

/// Pushes this node's purge to every live edge gossip reports, all at once, and notes which
/// answered that they applied it. Best effort: gossip brings it to the rest.
pub(crate) async fn push(
    peers: Arc<crate::shield::Peers>,
    acks: Arc<Acks>,
    issuer: String,
    at: u64,
    purge: Purge,
) {
    let body = match serde_json::to_vec(&PushedPurge { issuer, at, purge }) {
        Ok(b) => bytes::Bytes::from(b),
        Err(_) => return,
    };
    let mut all = tokio::task::JoinSet::new();
    for (edge, addr) in peers.live_edges() {
        let (peers, body) = (peers.clone(), body.clone());
        all.spawn(async move { peers.push_purge(&edge, addr, body).await.then_some(edge) });
    }
    while let Some(done) = all.join_next().await {
        if let Ok(Some(edge)) = done {
            acks.add(at, &edge);
        }
    }
}

/// What an issuer pushes to each edge.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct PushedPurge {
    pub(crate) issuer: String,
    pub(crate) at: u64,
    pub(crate) purge: Purge,
}

/// Applies a purge its issuer pushed (the signature held): at once, unless this edge has it
/// already (pushed before, or applied from gossip); how many objects memory held.
pub(crate) async fn apply_pushed(
    edge: &EdgeState,
    gossip: &Gossip,
    pushed: PushedPurge,
) -> Result<usize, Refused> {
    let me = gossip.members();
    let applied = me
        .iter()
        .find(|m| m.is_self)
        .and_then(|m| m.purged.get(&pushed.issuer).copied())
        .is_some_and(|w| w >= pushed.at);
    if applied || !edge.pushed.insert(pushed.at, &pushed.issuer) {
        return Ok(0);
    }
    let n = apply(edge, &pushed.purge, Some(pushed.at), false).await?;
    metrics::counter!("meridian_purges_applied_total", "node" => edge.node.clone()).increment(1);
    let now = unix_now_ms();
    if now >= pushed.at {
        metrics::histogram!("meridian_purge_apply_delay_seconds", "node" => edge.node.clone())
            .record((now - pushed.at) as f64 / 1000.0);
    }
    Ok(n)
}

/// How often an edge looks for purges gossip brought.
const FOLLOW_EVERY: Duration = Duration::from_millis(50);

/// Applies the cluster's purges to this edge as gossip brings them, and publishes what it has
/// applied, until `stop`. Reads from the disk tier are held until the first catch-up: gossip
/// has heard another node and brought no new purge for two rounds (or, alone, for `settle`).
pub(crate) async fn follow(
    edge: Arc<EdgeState>,
    gossip: Arc<Gossip>,
    round: Duration,
    settle: Duration,
    stop: CancellationToken,
) {
    let node = edge.node.clone();
    let applied_total = metrics::counter!("meridian_purges_applied_total", "node" => node.clone());
    let delay = metrics::histogram!("meridian_purge_apply_delay_seconds", "node" => node.clone());
    let held = edge.store.disk().is_some();
    if held {
        edge.store.hold_disk(true);
        tracing::info!("disk reads held until this edge has caught up with the cluster's purges");
    }
    let mut synced = !held;
    let start = Instant::now();
    let mut quiet_since: Option<Instant> = None;
    let mut applied: HashMap<String, u64> = HashMap::new();
    let mut seen_version = None;
    // MERIDIAN_TEST_PURGES_BY_PUSH_ONLY (a test hook, undocumented on purpose): apply nothing
    // gossip brings, so that a test sees what pushes alone do.
    let push_only = std::env::var_os("MERIDIAN_TEST_PURGES_BY_PUSH_ONLY").is_some();
    let mut tick = tokio::time::interval(FOLLOW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        // Heartbeats do not move it; only a new or changed key (or member) does.
        let version = gossip.state_version().await;
        let records = if seen_version == Some(version) {
            Vec::new()
        } else {
            seen_version = Some(version);
            gossip.purges_after(&applied).await
        };
        let records = if push_only { Vec::new() } else { records };
        let news = !records.is_empty();
        for r in records {
            if edge.pushed.take(r.at_ms, &r.issuer) {
                // Applied when its issuer pushed it.
                let w = applied.entry(r.issuer).or_insert(0);
                *w = (*w).max(r.at_ms);
                continue;
            }
            match serde_json::from_str::<Purge>(&r.value) {
                Ok(p) => {
                    if let Err((_, e)) = apply(&edge, &p, Some(r.at_ms), false).await {
                        tracing::warn!(purge = %id(r.at_ms, &r.issuer), error = %e, "a cluster purge did not apply whole");
                    }
                    applied_total.increment(1);
                    let now = unix_now_ms();
                    if !synced {
                        // Catching up: how late it is says nothing about gossip.
                    } else if now >= r.at_ms {
                        delay.record((now - r.at_ms) as f64 / 1000.0);
                    }
                }
                Err(e) => {
                    tracing::warn!(purge = %id(r.at_ms, &r.issuer), error = %e, "a gossiped purge this version cannot read; skipped")
                }
            }
            let w = applied.entry(r.issuer).or_insert(0);
            *w = (*w).max(r.at_ms);
        }
        if news {
            gossip.publish_purged(&applied).await;
        }
        if !synced {
            let now = Instant::now();
            let caught_up = if gossip.heard_others().await {
                if news {
                    quiet_since = None;
                }
                let quiet = *quiet_since.get_or_insert(now);
                now.duration_since(quiet) >= round * 2
            } else {
                now.duration_since(start) >= settle
            };
            if caught_up {
                synced = true;
                edge.store.hold_disk(false);
                tracing::info!(
                    purges = applied.len(),
                    after_ms = start.elapsed().as_millis() as u64,
                    "caught up with the cluster's purges; disk reads go on"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_purges_judge_copies_by_key_prefix_tag_and_time() {
        let recent = Recent::default();
        let now = unix_now_ms();
        let before = now - 20_000;
        assert!(!recent.predates("demo/a", &[], before), "nothing purged");
        recent.note(now - 10_000, Rule::Key("demo/a".into()));
        recent.note(now - 10_000, Rule::Prefix("demo/static/".into()));
        recent.note(now - 10_000, Rule::Tag("t".into()));
        // Left the origin before the purges: refused where a rule covers it.
        assert!(recent.predates("demo/a", &[], before));
        assert!(!recent.predates("demo/a?x", &[], before), "another key");
        assert!(recent.predates("demo/static/x.css", &[], before));
        assert!(recent.predates("demo/b", &["u".into(), "t".into()], before));
        assert!(!recent.predates("demo/b", &["u".into()], before));
        // Left since: kept.
        assert!(!recent.predates("demo/a", &[], now - 5_000));
        // A purge issued long ago but applied only now (this edge was down) counts from its
        // issue time.
        recent.note(now - 3_600_000, Rule::Key("demo/late".into()));
        assert!(recent.predates("demo/late", &[], now - 4_000_000));
        assert!(!recent.predates("demo/late", &[], now - 60_000));
        // Kept in issue order, not the order applied: the late one does not hide the others
        // from a scan that stops at the first purge older than the copy.
        assert!(recent.predates("demo/a", &[], before));
        let q = recent.lock();
        assert!(q
            .iter()
            .zip(q.iter().skip(1))
            .all(|(a, b)| a.issued_ms <= b.issued_ms));
        drop(q);
        // Forgotten RECENT_FOR_MS after it was applied, and never more than MAX_RECENT kept.
        // (From the clock now: the notes above took it as they went.)
        let later = unix_now_ms() + RECENT_FOR_MS + 1;
        recent.note_at(later, later, Rule::Key("demo/new".into()));
        assert_eq!(recent.lock().len(), 1, "the ones applied before went");
        for i in 0..MAX_RECENT + 10 {
            recent.note_at(later, later, Rule::Key(format!("demo/{i}")));
        }
        assert_eq!(recent.lock().len(), MAX_RECENT);
        assert!(recent
            .lock()
            .iter()
            .all(|a| a.rule != Rule::Key("demo/new".into())));
    }

    #[test]
    fn a_copy_leaves_the_origin_no_earlier_than_its_answer_says() {
        let now = unix_now_ms();
        // The peer's own millisecond time, less the clock slack.
        assert_eq!(
            left_origin(Some(now), Duration::from_secs(30)),
            now - CLOCK_SLACK_MS
        );
        // Else its Age, whole seconds: less a second for the rounding (from the time of the
        // call, which the clock may have passed `now` by).
        let e = left_origin(None, Duration::from_secs(3));
        let after = unix_now_ms();
        assert!(now - 4_000 <= e && e <= after - 4_000, "{e} {now} {after}");
    }

    #[test]
    fn requests_and_ids_read_back() {
        assert_eq!(
            Purge::parse(br#"{"url": "http://a.test/x"}"#),
            Ok(Purge::Url("http://a.test/x".into()))
        );
        assert_eq!(
            Purge::parse(br#"{"tag": " products "}"#),
            Ok(Purge::Tag("products".into()))
        );
        for bad in [
            &br#"{"url": "/x"}"#[..],
            br#"{"url": "http://a/", "tag": "t"}"#,
            br#"{"tag": " "}"#,
            br#"{"host": "a"}"#,
            b"nonsense",
        ] {
            assert!(
                Purge::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let p = Purge::Prefix("http://a.test/static/".into());
        let gossiped = serde_json::to_string(&p).unwrap();
        assert_eq!(gossiped, r#"{"prefix":"http://a.test/static/"}"#);
        assert_eq!(Purge::parse(gossiped.as_bytes()), Ok(p));
        assert_eq!(parse_id(&id(1700, "edge-a.x")), Some((1700, "edge-a.x")));
        assert_eq!(parse_id("x.edge"), None);
        assert_eq!(parse_id("17."), None);
    }
}
