//! Quick timing of the access path without Python: `cargo run --release --example randbench`.
use sevsim_engine::host::{Col, Host};
use sevsim_engine::HostConfig;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let l3 = args.get(1).cloned().unwrap_or("32MiB".into());
    let n: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(2_000_000);
    let o: toml::Table = toml::from_str(&format!(
        "sockets=1\nccds_per_socket=1\ncores_per_ccd=1\nthreads_per_core=1\n[l1d]\nsize=\"32KiB\"\nways=8\n[l2]\nsize=\"1MiB\"\nways=16\n[l3]\nsize=\"{l3}\"\nways=16\n"
    ))
    .unwrap();
    let cfg = HostConfig::from_profile(sevsim_engine::config::DEFAULT_PROFILE, "epyc-9755-2s", Some(&o)).unwrap();
    let mut h = Host::new(cfg, Some(64 << 30)).unwrap();
    let range: u64 = std::env::var("RANGE").map(|r| r.parse::<u64>().unwrap()).unwrap_or(4 << 30);
    let mut x: u64 = 88172645463325252;
    let addr: Vec<u64> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % range) & !7
        })
        .collect();
    let addr: Vec<u64> = if std::env::var("STREAM").is_ok() { (0..n as u64).map(|i| i * 8).collect() } else { addr };
    for rep in 0..3 {
        let t = Instant::now();
        h.access_batch(Col::One(0), &addr, Col::One(false), Col::One(0), None).unwrap();
        println!("rep {rep}: {:.1} ns/access", t.elapsed().as_nanos() as f64 / n as f64);
        let s = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap();
        for l in s.lines().filter(|l| l.starts_with("AnonHuge") || l.starts_with("Rss")) { println!("{l}"); }
    }
}
#[allow(dead_code)]
fn thp() {}
