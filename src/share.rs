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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The units each client holds of one resource, at most `limit` each.
#[derive(Debug)]
pub(crate) struct Clients {
    limit: usize,
    /// By [`key`] of the client's address.
    held: Mutex<Table>,
    /// Takes that found their client at its share and waited.
    waits: metrics::Counter,
}

/// The clients seen lately, each with what it holds. A client stays in the table when it gives
/// its last unit back (giving back takes no lock: a unit holds its client's entry itself); the
/// clients that hold nothing and that no take waits for leave it when a new client finds the
/// table at `sweep_at` entries, which then becomes twice the clients left (at least
/// [`SWEEP_AT_LEAST`]). The table so holds at most about twice its most clients at once.
#[derive(Debug)]
struct Table {
    by_client: HashMap<u128, Arc<Held>>,
    sweep_at: usize,
}

/// The fewest entries at which the table is swept.
const SWEEP_AT_LEAST: usize = 1024;

/// What one client holds, and its waiters' bell.
#[derive(Debug, Default)]
struct Held {
    /// Units held: taken under the table's lock (so that no take passes the limit), given back
    /// without it (it only falls meanwhile).
    n: AtomicUsize,
    /// Takes of this client waiting for a unit, counted before their last look at `n`.
    waiting: AtomicUsize,
    freed: Notify,
}

/// One of a client's units; given back when dropped.
#[derive(Debug)]
pub(crate) struct Share {
    held: Arc<Held>,
}

impl Clients {
    /// At most `limit` units a client; `waits` counts the takes that had to wait.
    pub(crate) fn new(limit: usize, waits: metrics::Counter) -> Arc<Clients> {
        Arc::new(Clients {
            limit,
            held: Mutex::new(Table {
                by_client: HashMap::new(),
                sweep_at: SWEEP_AT_LEAST,
            }),
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

    fn table(&self) -> MutexGuard<'_, Table> {
        // cannot fail in practice: nothing panics under this lock; recover the guard anyway.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One more unit for `client` (as [`Clients::client`] counts it); if it holds its share,
    /// its entry (whose bell rings when one of them is given back).
    fn try_take(&self, client: IpAddr) -> Result<Share, Arc<Held>> {
        let client = key(client);
        let mut table = self.table();
        let held = match table.by_client.get(&client) {
            Some(held) => held,
            None => {
                table.sweep_if_due();
                table.by_client.entry(client).or_default()
            }
        };
        // Only takes, under this lock, raise `n`: it cannot pass the limit between the look
        // and the raise.
        if held.n.load(Ordering::SeqCst) >= self.limit {
            return Err(held.clone());
        }
        held.n.fetch_add(1, Ordering::SeqCst);
        Ok(Share { held: held.clone() })
    }

    /// One more unit for the client at `addr`: at once, else the first of its own given back
    /// within `wait` (none: however long that takes).
    pub(crate) async fn take(&self, addr: IpAddr, wait: Option<Duration>) -> Option<Share> {
        let client = Clients::client(addr);
        // Set at the first wait: when the wait ends (`None` inside: never). The clock is read
        // only for a take that waits (most do not).
        let mut deadline: Option<Option<Instant>> = None;
        loop {
            let held = match self.try_take(client) {
                Ok(share) => return Some(share),
                Err(held) => held,
            };
            if deadline.is_none() {
                self.waits.increment(1);
                deadline = Some(wait.map(|w| Instant::now() + w));
            }
            // Counted, then listening, before looking again: a unit given back after the
            // count rings the bell, one given back before it is seen by the look.
            let _waiting = Waiting::on(&held);
            let notified = held.freed.notified();
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

    /// Clients in the table (tests).
    #[cfg(test)]
    fn in_table(&self) -> usize {
        self.table().by_client.len()
    }
}

impl Table {
    /// At `sweep_at` entries, drops the clients that hold nothing and that no take waits for
    /// (their entries are the table's alone).
    fn sweep_if_due(&mut self) {
        if self.by_client.len() < self.sweep_at {
            return;
        }
        self.by_client
            .retain(|_, held| Arc::strong_count(held) > 1 || held.n.load(Ordering::SeqCst) > 0);
        self.sweep_at = (self.by_client.len() * 2).max(SWEEP_AT_LEAST);
    }
}

/// A take counted among its client's waiters while it lives.
struct Waiting<'a>(&'a Held);

impl<'a> Waiting<'a> {
    fn on(held: &'a Held) -> Waiting<'a> {
        held.waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(held)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A client (as [`Clients::client`] counts it) as the table's key: IPv4 as its IPv4-mapped
/// IPv6 address, so that every address is one 16-byte value, hashed in one write (an `IpAddr`
/// is three: ~40 instructions more at each take).
fn key(client: IpAddr) -> u128 {
    match client {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

impl Drop for Share {
    /// No lock and no lookup: the unit's own entry, and its bell only when a take waits.
    fn drop(&mut self) {
        self.held.n.fetch_sub(1, Ordering::SeqCst);
        // After the fall of `n` (both sequentially consistent): a waiter counted before this
        // look is rung; one counted after it sees the fall in its own look.
        if self.held.waiting.load(Ordering::SeqCst) > 0 {
            // One unit, one waiter (passed on if that one has gone meanwhile).
            self.held.freed.notify_one();
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
        let held = clients.try_take(a).unwrap_err();
        let _waiting = Waiting::on(&held);
        let woken = held.freed.notified();
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

    /// A unit given back while the client still holds others wakes one waiter too.
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

    /// Units are given back without the table's lock, so a client stays in the table after its
    /// last one: the clients that hold nothing leave it when it grows, and it never holds many
    /// more than twice the clients holding something (a flood of addresses cannot grow it).
    #[test]
    fn the_table_lets_go_of_clients_that_hold_nothing() {
        let clients = Clients::new(1, metrics::Counter::noop());
        let holding: Vec<Share> = (0..300u32)
            .map(|i| {
                clients
                    .try_take(IpAddr::from((0x0a00_0000 + i).to_be_bytes()))
                    .unwrap()
            })
            .collect();
        let mut most = 0;
        for i in 0..20_000u32 {
            let addr = IpAddr::from((0x0b00_0000 + i).to_be_bytes());
            drop(clients.try_take(addr).unwrap());
            most = most.max(clients.in_table());
        }
        assert!(
            most <= SWEEP_AT_LEAST.max(2 * holding.len()) + 1,
            "the table held {most} clients with {} holding units",
            holding.len()
        );
        // The clients still holding their unit kept it through every sweep.
        for i in 0..300u32 {
            let addr = IpAddr::from((0x0a00_0000 + i).to_be_bytes());
            assert!(clients.try_take(addr).is_err(), "client {i} lost its unit");
        }
        drop(holding);
        let a: IpAddr = [10, 0, 0, 1].into();
        assert!(clients.try_take(a).is_ok(), "given back when dropped");
    }

    /// Many takes of one client on several threads, each holding its unit a moment: never
    /// more than the share at once, and every take ends (no unit given back is missed by a
    /// waiter).
    #[test]
    fn racing_takes_never_pass_the_share_and_all_end() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        let clients = Clients::new(3, metrics::Counter::noop());
        let now = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        rt.block_on(async {
            let tasks: Vec<_> = (0..64)
                .map(|_| {
                    let (clients, now, most) = (clients.clone(), now.clone(), most.clone());
                    tokio::spawn(async move {
                        let a: IpAddr = [10, 0, 0, 1].into();
                        for _ in 0..50 {
                            let share = clients.take(a, None).await.unwrap();
                            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(n, Ordering::SeqCst);
                            tokio::task::yield_now().await;
                            now.fetch_sub(1, Ordering::SeqCst);
                            drop(share);
                        }
                    })
                })
                .collect();
            for t in tasks {
                tokio::time::timeout(Duration::from_secs(20), t)
                    .await
                    .expect("every take ended")
                    .unwrap();
            }
        });
        let most = most.load(Ordering::SeqCst);
        assert!((1..=3).contains(&most), "{most} units held at once");
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
