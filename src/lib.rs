//! kmeta's runtime: everything that waits, talks or touches the disk. The decisions live in
//! the pure `kmeta-metadata` crate.

pub use kmeta_metadata as metadata;

/// See [`alloc`]: large allocations reserve address space only, so a hostile array count
/// cannot abort the process.
/// (Not with the `system-alloc` feature, a build for heap profilers: see `Cargo.toml`.)
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: alloc::GuardedAlloc = alloc::GuardedAlloc;

pub mod alloc;
pub mod bench;
pub mod broker;
pub mod cli;
pub mod config;
pub mod controller;
pub mod dev;
pub mod faults;
pub mod kafka;
pub mod local;
pub mod metrics;
pub mod raft;
pub mod sasl;
pub mod server;
pub mod sim;
pub mod storage;
pub mod tls;

/// Runs `f`, a stretch of synchronous work that may take long (a large change replayed or
/// applied), letting a multi-thread runtime hand this worker's other tasks to another thread
/// meanwhile: a broker keeps serving clients and followers, and a controller keeps answering
/// Raft (a follower whose answers stall for seconds makes the leader's lease lapse, and its
/// writes are refused). Elsewhere (a current-thread runtime: tests, the simulation) it just
/// runs `f`.
pub(crate) fn cpu_bound<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// When a stretch of long synchronous work began, by the wall clock and by the calling
/// thread's CPU clock: logged as both, which tells work from waiting for a core. Read it on
/// the thread that started it.
pub(crate) struct WorkTimer {
    wall: std::time::Instant,
    cpu_ms: f64,
}

impl WorkTimer {
    pub(crate) fn start() -> WorkTimer {
        WorkTimer {
            wall: std::time::Instant::now(),
            cpu_ms: thread_cpu_ms(),
        }
    }

    /// Wall-clock milliseconds since the start.
    pub(crate) fn wall_ms(&self) -> u64 {
        self.wall.elapsed().as_millis() as u64
    }

    /// Milliseconds of this thread's CPU time since the start.
    pub(crate) fn cpu_ms(&self) -> u64 {
        (thread_cpu_ms() - self.cpu_ms) as u64
    }
}

/// The CPU time the calling thread has used, in milliseconds.
fn thread_cpu_ms() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) writes one timespec, which `t` is.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 * 1e3 + t.tv_nsec as f64 / 1e6
}

/// True for records whose replay may take long enough to call for [`cpu_bound`]: many of
/// them, or one over a broker's partitions.
pub(crate) fn heavy_to_replay(records: &[kmeta_metadata::record::MetadataRecord]) -> bool {
    records.len() >= 1_000
        || records.iter().any(|r| {
            matches!(
                r,
                kmeta_metadata::record::MetadataRecord::BrokerPartitions(_)
            )
        })
}

/// The first of `n` consecutive free ports on 127.0.0.1 for servers started later, none handed
/// out before by this process. From 20000-32767, below Linux's ephemeral range: an ephemeral
/// port can be taken by a started server's outgoing connection between this check and a later
/// server's bind (a bench broker once failed to bind its metrics port so). The start is random,
/// since tests pick ports in parallel processes.
pub fn free_ports(n: u16) -> Result<u16, String> {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    const LOW: u16 = 20_000;
    const HIGH: u16 = 32_768;
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..10_000 {
        let base = rand::random_range(LOW..HIGH - n);
        let free = (base..base + n)
            .all(|p| !given.contains(&p) && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
        if free {
            given.extend(base..base + n);
            return Ok(base);
        }
    }
    Err(format!(
        "no {n} free consecutive ports in {LOW}-{}",
        HIGH - 1
    ))
}

/// A new cluster id: a random UUID in Kafka's URL-safe base64 form (22 characters). Like
/// Kafka's `Uuid.randomUuid`, it never starts with `-`, which a command line would take for a
/// flag (`--cluster-id -abc...`).
pub fn random_cluster_id() -> String {
    loop {
        let id = encode_uuid(uuid::Uuid::new_v4().as_u128());
        if !id.starts_with('-') {
            return id;
        }
    }
}

fn encode_uuid(bits: u128) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    (0..22)
        .map(|i| {
            let shift = 128i32 - 6 * (i + 1);
            let index = if shift >= 0 {
                (bits >> shift) & 63
            } else {
                (bits << -shift) & 63
            };
            ALPHABET[index as usize] as char
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn cluster_ids_never_start_with_a_dash() {
        // 62 << 122 puts index 62 ('-') in the first character.
        assert!(super::encode_uuid(62u128 << 122).starts_with('-'));
        for _ in 0..10_000 {
            let id = super::random_cluster_id();
            assert_eq!(id.len(), 22);
            assert!(!id.starts_with('-'), "{id}");
        }
    }
}
