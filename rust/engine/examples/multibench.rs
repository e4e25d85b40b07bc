//! Timing of the multi-CPU access path without Python: `cargo run --release --example multibench`.
//! The two cases of benches/bench_cache.py: 512 CPUs taking turns on random lines over 64 GiB
//! (30 % writes), and 512 CPUs on a shared 64 MiB working set (10 % writes). Each round a fresh
//! host (env ROUNDS, default 3); the best wall and CPU time per access.
use sevsim_engine::host::{Col, Host};
use sevsim_engine::HostConfig;
use std::time::Instant;

/// This thread's CPU time in ns.
fn cpu_ns() -> u128 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to fill
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as u128 * 1_000_000_000 + t.tv_nsec as u128
}

fn main() {
    let n = 1_000_000usize;
    let mut x: u64 = 88172645463325252;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let cases: Vec<(&str, Vec<u32>, Vec<u64>, Vec<bool>)> = vec![
        (
            "interleaved-64GiB",
            (0..n).map(|i| (i % 512) as u32).collect(),
            (0..n).map(|_| (next() % (64 << 30)) & !7).collect(),
            (0..n).map(|_| next() % 10 < 3).collect(),
        ),
        (
            "shared-64MiB",
            (0..n).map(|_| (next() % 512) as u32).collect(),
            (0..n).map(|_| (next() % (64 << 20)) & !7).collect(),
            (0..n).map(|_| next() % 10 < 1).collect(),
        ),
    ];
    let only = std::env::args().nth(1);
    for (name, cpu, addr, write) in cases.iter().filter(|c| only.as_deref().is_none_or(|o| c.0 == o)) {
        let (mut best, mut best_cpu) = (f64::MAX, f64::MAX);
        let rounds: usize = std::env::var("ROUNDS").map(|s| s.parse().unwrap()).unwrap_or(3);
        for _ in 0..rounds {
            let cfg = HostConfig::from_profile(sevsim_engine::config::DEFAULT_PROFILE, "epyc-9755-2s", None).unwrap();
            let mut h = Host::new(cfg, Some(64 << 30)).unwrap();
            let (t, c) = (Instant::now(), cpu_ns());
            h.access_batch(Col::Each(cpu), addr, Col::Each(write), Col::One(0), None).unwrap();
            best = best.min(t.elapsed().as_nanos() as f64 / n as f64);
            best_cpu = best_cpu.min((cpu_ns() - c) as f64 / n as f64);
        }
        println!("{name}: {best:.1} ns/access (best of {rounds}; CPU time {best_cpu:.1})");
    }
}
