//! Giving freed memory back to the operating system.
//!
//! The store frees whole objects when it evicts or purges them, but glibc's allocator keeps
//! freed small allocations in its arenas for reuse, and pages left between live allocations
//! stay resident until `malloc_trim` returns them. So an edge whose cache churns (a flood of
//! one-hit objects, a purge of everything) would sit well above `cache_memory` for good. The
//! store reports what it releases here; a background thread trims once a sixteenth of the
//! smallest cache has been released since the last trim (checked every second), and a purge
//! trims at once.
//!
//! Arenas: every glibc arena keeps partly used pages of its own, so the more arenas, the more
//! memory a churning cache leaves scattered; but threads that share an arena queue on its lock
//! for every allocation their per-thread cache cannot serve. One arena for the whole process cost
//! HTTP/2 hits a quarter of their time in futex calls (h2 frames, HPACK and TLS records allocate
//! on one worker and free on the other), so [`configure`] allows two arenas per core unless
//! `MALLOC_ARENA_MAX` says otherwise. Measured on two cores (`benches/memory.sh` with
//! `EDGE_ENV=MALLOC_ARENA_MAX=N`, and `h2load -c64 -m10` of a 1 KiB hit over TLS): one arena,
//! about 34,000 HTTP/2 hits/s, and 83.5 MiB RSS after a flood of 1 KiB objects into a 64 MiB
//! cache (bound: 1.25 x cache + base, about 96 MiB); four, about 44,000 hits/s, and at most
//! 90.8 MiB after any flood; eight, about 48,000, but one run's flood of 100 KiB objects
//! reached 101.1 MiB, over the bound (another's 84.4): more arenas, more scattered free space.
//!
//! Process-wide, like the allocator: several edges in one process (the demo, tests) share it.
//! Elsewhere than glibc this is a no-op.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Bytes released by stores since the last trim.
static RELEASED: AtomicU64 = AtomicU64::new(0);
/// Trim once this many bytes were released (a sixteenth of the smallest cache).
static THRESHOLD: AtomicU64 = AtomicU64::new(u64::MAX);
/// How often the trimmer looks.
const EVERY: Duration = Duration::from_secs(1);

/// Sets the allocator up for a long-running cache; call first thing in `main`, before other
/// threads exist.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let arenas = i32::try_from(cores.saturating_mul(2)).unwrap_or(i32::MAX);
        // SAFETY: mallopt takes two integers; called before other threads allocate.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

/// Registers a store of `capacity` bytes and starts the trimmer (once per process).
pub(crate) fn watch(capacity: u64) {
    THRESHOLD.fetch_min((capacity / 16).max(1 << 20), Ordering::Relaxed);
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("memory-trim".into())
            .spawn(|| loop {
                std::thread::sleep(EVERY);
                if RELEASED.load(Ordering::Relaxed) >= THRESHOLD.load(Ordering::Relaxed) {
                    trim();
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the memory trimmer; freed cache memory stays resident");
        }
    });
}

/// Notes that a store let go of `bytes`.
pub(crate) fn released(bytes: u64) {
    RELEASED.fetch_add(bytes, Ordering::Relaxed);
}

/// The glibc tunable (in `GLIBC_TUNABLES`) that turns its per-thread caches off. With two HTTP
/// threads (`edge.threads`) and the caches on, `benches/memory.sh`'s flood of new 1 KiB objects
/// left 104-150 MiB of RSS against a bound of about 97 (malloc_stats: 56 MB in use either way,
/// the rest free but resident in the arenas' heaps); with the caches off, 70-84 MiB. Its cost
/// in hits/s is within this machine's noise (the README has the figures). glibc reads its
/// tunables only when a process starts: [`restart_with_thread_caches_off`] arranges it.
pub const TCACHE_OFF: &str = "glibc.malloc.tcache_count=0";

/// Whether glibc ignores its tunables in this process: started in secure mode (a binary with
/// file capabilities, as in the container image, or setuid).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn secure_mode() -> bool {
    // SAFETY: getauxval reads a value of the process's auxiliary vector; no pointers.
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}

/// The tcache count `GLIBC_TUNABLES` sets, if it sets one.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tcache_count_set() -> Option<String> {
    // Lossy: a value that is not UTF-8 must still show the setting `restart_with_thread_caches_off`
    // appended to it, or the restarted process would restart again.
    let tunables = std::env::var_os("GLIBC_TUNABLES")?;
    let tunables = tunables.to_string_lossy();
    let count = tunables
        .split(':')
        .rev()
        .find_map(|kv| kv.trim().strip_prefix("glibc.malloc.tcache_count="))?;
    Some(count.to_string())
}

/// Whether this process runs with glibc's per-thread caches off (always true elsewhere than
/// glibc, where there are none to turn off).
pub fn thread_caches_off() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        !secure_mode() && tcache_count_set().is_some_and(|n| n.trim() == "0")
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    true
}

/// Why [`restart_with_thread_caches_off`] would leave glibc's per-thread caches on in this
/// process, if it would: secure mode, or the environment's own choice of a tcache count.
pub fn thread_caches_stay_on() -> Option<String> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if secure_mode() {
            return Some("the process runs in secure mode (a binary with file capabilities or setuid), where glibc ignores GLIBC_TUNABLES".into());
        }
        match tcache_count_set() {
            Some(n) if n.trim() != "0" => {
                Some(format!("GLIBC_TUNABLES sets glibc.malloc.tcache_count={n}"))
            }
            _ => None,
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

/// HTTP threads when `edge.threads` is not set: one per core where glibc's per-thread caches are
/// off in this process (as `meridian run` arranges), else none (the shared runtime), since with
/// the caches on the threads let a churning cache hold memory well above `cache_memory`.
pub fn default_http_threads() -> usize {
    if thread_caches_off() {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        0
    }
}

/// Starts this program again in this process (the same pid, binary, arguments and environment)
/// with glibc's per-thread caches off, for a long-running node: glibc reads
/// `GLIBC_TUNABLES` only when a process starts. Returns without doing so where they are off
/// already, where the environment sets a tcache count of its own (the operator's choice), in
/// secure mode (glibc would ignore it), elsewhere than glibc, or if the exec fails (said on
/// stderr; the node then runs with the caches on). Call before any other thread exists.
pub fn restart_with_thread_caches_off() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        // Once only, whatever glibc made of the variable in the restarted process.
        const RESTARTED: &str = "MERIDIAN_RESTARTED_FOR_ALLOCATOR";
        if secure_mode() || tcache_count_set().is_some() || std::env::var_os(RESTARTED).is_some() {
            return;
        }
        let mut tunables = std::env::var_os("GLIBC_TUNABLES").unwrap_or_default();
        if !tunables.is_empty() {
            tunables.push(":");
        }
        tunables.push(TCACHE_OFF);
        let mut args = std::env::args_os();
        // The binary's own path rather than /proc/self/exe, whose name ("exe") the kernel would
        // give the process: `pgrep meridian` and `top` must still find it.
        let me = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
        let mut again = std::process::Command::new(me);
        if let Some(name) = args.next() {
            again.arg0(name);
        }
        let e = again
            .args(args)
            .env("GLIBC_TUNABLES", tunables)
            .env(RESTARTED, "1")
            .exec();
        eprintln!(
            "cannot restart with GLIBC_TUNABLES={TCACHE_OFF} ({e}); going on with glibc's per-thread caches on"
        );
    }
}

/// Returns free memory to the operating system now (call off the async threads: it walks the
/// allocator's free lists under its locks, about a millisecond per hundred MiB of heap).
pub(crate) fn trim() {
    let freed = RELEASED.swap(0, Ordering::Relaxed);
    let t = Instant::now();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and may be called from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
    tracing::debug!(
        released = freed,
        took_us = t.elapsed().as_micros() as u64,
        "returned free memory to the system"
    );
}
