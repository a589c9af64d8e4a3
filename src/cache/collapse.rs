//! Request collapsing: one origin fetch per key, however many requests want it at once.
//!
//! The first request for a key becomes the leader and gets a [`Leader`] guard; later ones get a
//! [`Follower`] that resolves the moment the leader publishes its outcome (a `watch` channel, so
//! there is no polling tick). If the leader's guard is dropped without publishing (its task
//! panicked or was cancelled), followers see the channel close and fetch on their own: a follower
//! is never left waiting on a fetch that no longer exists.
//!
//! Concurrency: the map lock is held only to look up or insert a key, never across an await.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// In-flight fetches by key.
pub(crate) struct Collapser<T> {
    inflight: Mutex<HashMap<String, watch::Receiver<Option<T>>>>,
}

/// The outcome of joining a key.
pub(crate) enum Join<T: Clone> {
    Leader(Leader<T>),
    Follower(Follower<T>),
}

/// Held by the one request that fetches; publishing releases every follower.
pub(crate) struct Leader<T: Clone> {
    key: String,
    tx: watch::Sender<Option<T>>,
    owner: Arc<Collapser<T>>,
}

/// Held by a request waiting for a leader's outcome.
pub(crate) struct Follower<T> {
    rx: watch::Receiver<Option<T>>,
}

impl<T: Clone> Collapser<T> {
    pub(crate) fn new() -> Arc<Collapser<T>> {
        Arc::new(Collapser {
            inflight: Mutex::new(HashMap::new()),
        })
    }

    /// Joins the fetch for `key`, becoming its leader if there is none.
    pub(crate) fn join(self: &Arc<Self>, key: &str) -> Join<T> {
        // cannot fail: the lock is never held across a panic point that could poison it
        // (only map operations run under it); recover the guard anyway rather than panic.
        let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = map.get(key) {
            if rx.has_changed().is_ok() {
                return Join::Follower(Follower { rx: rx.clone() });
            }
        }
        let (tx, rx) = watch::channel(None);
        map.insert(key.to_string(), rx);
        Join::Leader(Leader {
            key: key.to_string(),
            tx,
            owner: self.clone(),
        })
    }

    /// Keys with a fetch in flight.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

impl<T: Clone> Leader<T> {
    /// Publishes an outcome to every follower, present and later, keeping the key: requests
    /// that join until [`Leader::finish`] (or drop) get it at once, and fetch nothing.
    pub(crate) fn publish(&self, outcome: T) {
        self.tx.send_replace(Some(outcome));
    }

    /// Publishes the outcome to every follower and retires the key.
    pub(crate) fn finish(self, outcome: T) {
        self.tx.send_replace(Some(outcome));
        // Drop removes the key.
    }
}

impl<T: Clone> Drop for Leader<T> {
    fn drop(&mut self) {
        let mut map = self
            .owner
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Remove only our own registration: a later leader may have replaced a closed one.
        if map
            .get(&self.key)
            .is_some_and(|rx| rx.same_channel(&self.tx.subscribe()))
        {
            map.remove(&self.key);
        }
    }
}

impl<T: Clone> Follower<T> {
    /// Waits for the leader's outcome; `None` if the leader went away without one.
    pub(crate) async fn wait(mut self) -> Option<T> {
        match self.rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone(),
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_get_the_leaders_outcome_at_once() {
        let c = Collapser::<u32>::new();
        let Join::Leader(leader) = c.join("k") else {
            panic!("first must lead")
        };
        let followers: Vec<_> = (0..10)
            .map(|_| match c.join("k") {
                Join::Follower(f) => tokio::spawn(f.wait()),
                Join::Leader(_) => panic!("second must follow"),
            })
            .collect();
        leader.finish(7);
        for f in followers {
            assert_eq!(f.await.unwrap(), Some(7));
        }
        assert_eq!(c.len(), 0);
        assert!(matches!(c.join("k"), Join::Leader(_)));
    }

    #[tokio::test]
    async fn a_dropped_leader_releases_followers() {
        let c = Collapser::<u32>::new();
        let Join::Leader(leader) = c.join("k") else {
            panic!()
        };
        let Join::Follower(f) = c.join("k") else {
            panic!()
        };
        drop(leader);
        assert_eq!(f.wait().await, None);
        assert_eq!(c.len(), 0);
    }
}
