//! What each client address holds of a bounded resource, so that no one client can hold it all:
//! a site's origin request slots (`origin`, `max_origin_requests_per_client`) and the room for
//! chunks read from the disk tier (`cache::disk`, a quarter of `read_memory`). Past its share,
//! a client's requests wait for one of its own to give its unit back.
//!
//! An IPv6 address counts by its /64 (which one subscriber has whole), an IPv4-mapped one as
//! its IPv4 address. Each client is woken by its own units only, so a client with thousands of
//! requests waiting costs nothing when others' requests end. A NAT or a proxy is one client;
//! a client with many addresses (an IPv6 attacker has many /64s) can still hold everything: a
//! share raises the cost of that, it does not end it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The units each client holds of one resource, at most `limit` each.
#[derive(Debug)]
pub(crate) struct Clients {
    limit: usize,
    /// By [`key`] of the client's address.
    held: Mutex<HashMap<u128, Held>>,
    /// Takes that found their client at its share and waited.
    waits: metrics::Counter,
}

/// What one client holds, and its waiters' bell: made by the first take that finds the client
/// at its share (most clients never wait, and a bell for each would cost every origin request
/// an allocation).
#[derive(Debug)]
struct Held {
    n: usize,
    freed: Option<Arc<Notify>>,
}

/// One of a client's units; given back when dropped.
#[derive(Debug)]
pub(crate) struct Share {
    clients: Arc<Clients>,
    client: u128,
}

impl Clients {
    /// At most `limit` units a client; `waits` counts the takes that had to wait.
    pub(crate) fn new(limit: usize, waits: metrics::Counter) -> Arc<Clients> {
        Arc::new(Clients {
            limit,
            held: Mutex::default(),
            waits,
        })
    }

    /// Most units one client holds at once.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// How requests of `addr` are counted: IPv4 by address, IPv6 by /64.
    pub(crate) fn client(addr: IpAddr) -> IpAddr {
        match addr {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => v4.into(),
                None => Ipv6Addr::from(u128::from(v6) & !(u64::MAX as u128)).into(),
            },
            v4 => v4,
        }
    }

    fn held(&self) -> MutexGuard<'_, HashMap<u128, Held>> {
        // cannot fail in practice: nothing panics under this lock; recover the guard anyway.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One more unit for `client` (as [`Clients::client`] counts it); if it holds its share,
    /// what tells when one of them is given back.
    fn try_take(self: &Arc<Self>, client: IpAddr) -> Result<Share, Arc<Notify>> {
        let client = key(client);
        let mut held = self.held();
        let h = held.entry(client).or_insert(Held { n: 0, freed: None });
        if h.n >= self.limit {
            return Err(h.freed.get_or_insert_with(Arc::default).clone());
        }
        h.n += 1;
        Ok(Share {
            clients: self.clone(),
            client,
        })
    }

    /// One more unit for the client at `addr`: at once, else the first of its own given back
    /// within `wait` (none: however long that takes).
    pub(crate) async fn take(
        self: &Arc<Self>,
        addr: IpAddr,
        wait: Option<Duration>,
    ) -> Option<Share> {
        let client = Clients::client(addr);
        // Set at the first wait: when the wait ends (`None` inside: never). The clock is read
        // only for a take that waits (most do not).
        let mut deadline: Option<Option<Instant>> = None;
        loop {
            let freed = match self.try_take(client) {
                Ok(share) => return Some(share),
                Err(freed) => freed,
            };
            if deadline.is_none() {
                self.waits.increment(1);
                deadline = Some(wait.map(|w| Instant::now() + w));
            }
            // Listening before looking again, so that a unit given back in between is not
            // missed.
            let notified = freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Ok(share) = self.try_take(client) {
                return Some(share);
            }
            match deadline.flatten() {
                Some(d) => tokio::time::timeout_at(d, notified).await.ok()?,
                None => notified.await,
            }
        }
    }
}

/// A client (as [`Clients::client`] counts it) as the table's key: IPv4 as its IPv4-mapped
/// IPv6 address, so that every address is one 16-byte value, hashed in one write (an `IpAddr`
/// is three: ~80 instructions more, twice a request).
fn key(client: IpAddr) -> u128 {
    match client {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let (freed, last) = {
            let mut held = self.clients.held();
            let std::collections::hash_map::Entry::Occupied(mut h) = held.entry(self.client) else {
                return;
            };
            h.get_mut().n -= 1;
            if h.get().n == 0 {
                (h.remove().freed, true)
            } else {
                (h.get().freed.clone(), false)
            }
        };
        // No bell: no take of this client ever waited.
        let Some(freed) = freed else {
            return;
        };
        if last {
            // Its waiters (if any) take a new entry's bell from here.
            freed.notify_waiters();
        } else {
            // One unit, one waiter (passed on if that one has gone meanwhile).
            freed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_client_past_its_share_is_woken_by_its_own_units_only() {
        let clients = Clients::new(1, metrics::Counter::noop());
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let held_a = clients.try_take(a).unwrap();
        let held_b = clients.try_take(b).unwrap();
        let freed = clients.try_take(a).unwrap_err();
        let woken = freed.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        drop(held_b);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), woken.as_mut())
                .await
                .is_err(),
            "another client's unit does not wake it"
        );
        drop(held_a);
        tokio::time::timeout(Duration::from_secs(1), woken)
            .await
            .expect("its own does");
        assert!(clients.try_take(a).is_ok());
    }

    /// A unit given back while the client still holds others wakes one waiter too (the bell
    /// is made by the take that waits, not with the client's first unit).
    #[tokio::test]
    async fn a_unit_given_back_short_of_the_last_wakes_a_waiter() {
        let clients = Clients::new(2, metrics::Counter::noop());
        let a: IpAddr = [10, 0, 0, 1].into();
        let first = clients.take(a, None).await.unwrap();
        let _second = clients.take(a, None).await.unwrap();
        woken_when_given_back(&clients, a, first).await;
    }

    /// Starts a take of `a` that must wait, gives `held` back, and expects the take to end.
    async fn woken_when_given_back(clients: &Arc<Clients>, a: IpAddr, held: Share) {
        let waiting = tokio::spawn({
            let clients = clients.clone();
            async move { clients.take(a, None).await.is_some() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(held);
        assert!(tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("woken by the unit given back")
            .unwrap());
    }

    #[tokio::test]
    async fn a_wait_ends_at_its_deadline_or_with_a_unit_given_back() {
        let clients = Clients::new(1, metrics::Counter::noop());
        let a: IpAddr = [10, 0, 0, 1].into();
        let held = clients.take(a, None).await.unwrap();
        let soon = Duration::from_millis(50);
        let taken = tokio::time::timeout(Duration::from_secs(5), clients.take(a, Some(soon)))
            .await
            .expect("the wait ended at its deadline, not 5 s later");
        assert!(taken.is_none(), "past its share until the deadline");
        woken_when_given_back(&clients, a, held).await;
    }

    #[test]
    fn an_ipv6_client_is_its_64_and_a_mapped_ipv4_one_its_address() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            Clients::client(ip("2001:db8:1:2:aaaa::1")),
            Clients::client(ip("2001:db8:1:2:bbbb::9"))
        );
        assert_ne!(
            Clients::client(ip("2001:db8:1:2::1")),
            Clients::client(ip("2001:db8:1:3::1"))
        );
        assert_eq!(Clients::client(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
    }
}
