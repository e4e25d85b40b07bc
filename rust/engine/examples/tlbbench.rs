//! The TLB-miss-heavy trace of benches/bench_tlb.py without Python: 1 M translated reads, uniform
//! random over 262,144 mapped 4 KiB pages (1 GiB), one CPU, host context.
//! `cargo run --release -p sevsim-engine --example tlbbench [accesses] [svm]`: with `svm`, the
//! same trace from an SVM guest; with `hits`, over 64 pages only (every translation an L1 DTLB hit) (guest table and NPT both of 4 KiB leaves: two-dimensional walks).
use sevsim_engine::host::{Col, Host};
use sevsim_engine::paging::{PageSize, TableKind};
use sevsim_engine::tlb::{Context, Mode};
use sevsim_engine::HostConfig;
use std::time::Instant;

fn main() {
    let n: usize = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(1_000_000);
    let o: toml::Table = toml::from_str("sockets=1\nccds_per_socket=1\ncores_per_ccd=1\nthreads_per_core=1\n").unwrap();
    let cfg = HostConfig::from_profile(sevsim_engine::config::DEFAULT_PROFILE, "epyc-9755-2s", Some(&o)).unwrap();
    let mut h = Host::new(cfg, Some(64 << 30)).unwrap();
    // `hits`: 64 pages, every translation an L1 DTLB hit (the other group of bench_tlb.py)
    let pages = if std::env::args().nth(2).as_deref() == Some("hits") { 64 } else { 262_144u64 };
    let va: Vec<u64> = (0..pages).map(|p| 0x7F00_0000_0000 + p * 4096).collect();
    let pa: Vec<u64> = (0..pages).map(|p| (1 << 30) + p * 4096).collect();
    if std::env::args().nth(2).as_deref() == Some("svm") {
        // guest virtual -> guest physical (scattered) -> host physical
        let gt = h.create_table(TableKind::Guest);
        let npt = h.create_table(TableKind::Nested);
        let gpa: Vec<u64> = (0..pages).map(|p| ((p * 7919) % pages) * 4096).collect();
        h.map_many(gt, &va, &gpa, PageSize::K4, 0).unwrap();
        let gpas: Vec<u64> = (0..pages).map(|p| p * 4096).collect();
        h.map_many(npt, &gpas, &pa, PageSize::K4, 0).unwrap();
        let ctx = h
            .create_context(Context { mode: Mode::Svm, tag: 1, pcid: 0, pcide: true, cr3: gt, nested: npt, key: 0, vm: 1 })
            .unwrap();
        h.vmrun(0, ctx, 0).unwrap();
    } else {
        h.map_many(0, &va, &pa, PageSize::K4, 0).unwrap();
    }
    let mut x: u64 = 88172645463325252;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let trace: Vec<u64> = (0..n).map(|_| va[(next() % pages) as usize] + (next() % 64) * 64).collect();
    for rep in 0..4 {
        let t = Instant::now();
        let r = h.access_virtual_batch(Col::One(0), &trace, Col::One(false), None).unwrap();
        assert_eq!(r[7], 0);
        println!("rep {rep}: {:.1} ns/access", t.elapsed().as_nanos() as f64 / n as f64);
    }
}
