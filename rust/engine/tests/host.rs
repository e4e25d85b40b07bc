//! Engine behaviour: the access path, coherence, instructions, and the textbook hazards.

use sevsim_engine::host::{Col, FlushOp, Host, Level};
use sevsim_engine::paging::PageSize;
use sevsim_engine::{Cause, HostConfig};

const PAGE: u64 = 4096;
const GUEST: u16 = 5;

fn tiny(coherent: bool) -> Host {
    let mut o = toml::Table::new();
    let mut f = toml::Table::new();
    f.insert("sme_coherent".into(), toml::Value::Boolean(coherent));
    o.insert("features".into(), toml::Value::Table(f));
    let cfg = HostConfig::from_profile(sevsim_engine::config::DEFAULT_PROFILE, "tiny", Some(&o)).unwrap();
    Host::new(cfg, None).unwrap()
}

fn touch_page(h: &mut Host, cpu: usize, pa: u64, write: bool, key: u16) {
    for l in 0..PAGE / 64 {
        h.access(cpu, pa + l * 64, write, key);
    }
}

fn count(h: &Host, cause: Cause) -> u64 {
    h.cause_counts().into_iter().find(|(c, _)| *c == cause).unwrap().1
}

/// Invariants of the coherence protocol, checked over every cached line.
fn check_invariants(h: &Host, pas: &[u64]) {
    for &pa in pas {
        let copies = h.copies(pa).unwrap();
        let mut keys: Vec<u16> = copies.iter().map(|c| c.key).collect();
        keys.sort();
        keys.dedup();
        for k in &keys {
            // L2/L3 copies are the coherence agents (L1 lives inside its L2)
            let agents: Vec<_> = copies.iter().filter(|c| c.key == *k && c.level > 1).collect();
            let excl = agents.iter().filter(|c| c.exclusive).count();
            let dirty = agents.iter().filter(|c| c.dirty).count();
            assert!(excl <= 1, "pa {pa:#x} key {k}: {excl} exclusive copies: {copies:?}");
            if excl == 1 {
                assert_eq!(agents.len(), 1, "pa {pa:#x} key {k}: exclusive copy is not alone: {copies:?}");
            }
            assert!(dirty <= 1, "pa {pa:#x} key {k}: {dirty} dirty owners: {copies:?}");
            // inclusion: every L1 copy has an L2 copy in the same core
            for c in copies.iter().filter(|c| c.key == *k && c.level == 1) {
                assert!(
                    copies.iter().any(|d| d.level == 2 && d.inst == c.inst && d.key == *k),
                    "pa {pa:#x}: L1 copy of core {} without L2 copy: {copies:?}",
                    c.inst
                );
            }
        }
        if h.cfg.features.sme_coherent {
            assert!(keys.len() <= 1, "SME_COHERENT host holds several keys' aliases of {pa:#x}: {copies:?}");
        }
    }
}

#[test]
fn hits_after_miss_and_levels() {
    let mut h = tiny(false);
    assert_eq!(h.access(0, 0x1000, false, 0), Level::Memory);
    assert_eq!(h.access(0, 0x1008, false, 0), Level::L1);
    // the SMT sibling of CPU 0 is CPU 4 on tiny (4 cores): same L1
    assert_eq!(h.access(4, 0x1000, false, 0), Level::L1);
    // another core of the same CCD gets it from CPU 0's core
    assert_eq!(h.access(1, 0x1000, false, 0), Level::Peer);
    // a core of the other CCD
    assert_eq!(h.access(2, 0x1000, false, 0), Level::Remote);
    assert!(h.directory_active());
    assert_eq!(h.ctr.l1_hits[0], 1);
    assert_eq!(h.ctr.mem_reads[0], 1);
    // a memory fill then an L1 hit, at the profile's latencies
    assert_eq!(h.cycles(0), (h.cfg.latency.memory + h.cfg.l1d.latency) as u64);
    check_invariants(&h, &[0x1000]);
}

#[test]
fn l3_is_a_victim_cache() {
    let mut h = tiny(false);
    // L2: 16 sets x 4 ways. Lines 0, 16, 32, 48, 64 (x 64 B) share L2 set 0 (and L3 set 0 mod 32).
    let stride = 16 * 64;
    for i in 0..5 {
        h.access(0, i * stride, true, 0);
    }
    // the first line was cast out to the L3, dirty
    let c = h.copies(0).unwrap();
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!((c[0].level, c[0].dirty), (3, true));
    // a hit moves it back into the L2 and out of the L3
    assert_eq!(h.access(0, 0, false, 0), Level::L3);
    let c = h.copies(0).unwrap();
    assert!(c.iter().all(|c| c.level < 3), "{c:?}");
    assert_eq!(h.ctr.writebacks[0], 0);
}

#[test]
fn write_invalidates_other_copies_and_takes_dirty_data() {
    let mut h = tiny(false);
    h.access(0, 0x40, true, 0); // M in core 0
    h.access(2, 0x40, false, 0); // remote read: core 0 -> O, core 2 -> S
    let c = h.copies(0x40).unwrap();
    assert!(c.iter().any(|c| c.level == 2 && c.inst == 0 && c.dirty && !c.exclusive), "{c:?}");
    check_invariants(&h, &[0x40]);
    h.access(2, 0x40, true, 0); // upgrade: core 0's copy goes, its dirty data moves to core 2
    let c = h.copies(0x40).unwrap();
    assert!(c.iter().all(|c| c.inst == 2), "{c:?}");
    assert_eq!(h.ctr.upgrades[2], 1);
    check_invariants(&h, &[0x40]);
    // nothing was written back: the dirty data moved between caches
    assert_eq!(h.mem.writes(), 0);
    h.wbinvd(2).unwrap();
    assert_eq!(h.mem.writes(), 1);
}

#[test]
fn aliases_without_sme_coherent_are_independent() {
    let mut h = tiny(false);
    h.access(0, 0x80, true, 7);
    h.access(0, 0x80, true, 0);
    let keys: Vec<u16> = h.copies(0x80).unwrap().iter().filter(|c| c.level == 2).map(|c| c.key).collect();
    assert_eq!(keys.len(), 2);
    assert_eq!(h.mem.writes(), 0);
}

#[test]
fn sme_coherent_evicts_other_keys() {
    let mut h = tiny(true);
    h.set_owner(0, PAGE, 7).unwrap();
    h.access(0, 0x80, true, 7);
    h.access(2, 0x80, false, 7);
    // an access under another key evicts both copies of key 7 and writes the dirty one back
    h.access(1, 0x80, false, 0);
    let c = h.copies(0x80).unwrap();
    assert!(c.iter().all(|c| c.key == 0), "{c:?}");
    assert_eq!(h.mem.writes(), 1);
    // the host read data written under key 7
    assert_eq!(count(&h, Cause::ReadForeignData), 1);
}

/// Guest key 5 dirties a page it owns; the host takes the page back.
fn guest_dirty_page(coherent: bool) -> Host {
    let mut h = tiny(coherent);
    h.set_owner(0x10000, PAGE, GUEST).unwrap();
    touch_page(&mut h, 1, 0x10000, true, GUEST);
    assert_eq!(h.violation_total(), 0);
    h
}

/// After the hand-back, the host reuses the page and lots of other traffic evicts everything.
fn reuse_and_churn(h: &mut Host) {
    h.set_owner(0x10000, PAGE, 0).unwrap();
    touch_page(h, 0, 0x10000, true, 0);
    for cpu in 0..h.topo.cpus {
        h.wbinvd(cpu).unwrap();
    }
}

#[test]
fn hazard_dirty_guest_line_written_back_after_set_owner_is_caught() {
    for coherent in [false, true] {
        let mut h = guest_dirty_page(coherent);
        reuse_and_churn(&mut h);
        assert!(count(&h, Cause::WritebackForeignOwner) > 0, "coherent={coherent}");
        let v = h.violations()[0];
        assert_eq!((v.key, v.owner), (GUEST, 0));
        assert!(v.pa >= 0x10000 && v.pa < 0x10000 + PAGE);
    }
}

#[test]
fn hazard_wbnoinvd_before_set_owner_prevents_it_and_keeps_lines() {
    let mut h = guest_dirty_page(false);
    let before = h.cached_lines(Some(GUEST), false);
    assert!(before > 0);
    h.wbinvd_on_cpus(0, &(0..h.topo.cpus).collect::<Vec<_>>(), false).unwrap();
    assert_eq!(h.cached_lines(Some(GUEST), true), 0, "nothing dirty is left");
    assert_eq!(h.cached_lines(Some(GUEST), false), before, "WBNOINVD keeps the lines valid");
    reuse_and_churn(&mut h);
    assert_eq!(h.violation_total(), 0, "{:?}", h.violations());
}

#[test]
fn hazard_wbinvd_before_set_owner_prevents_it_and_empties_caches() {
    let mut h = guest_dirty_page(false);
    h.wbinvd_on_cpus(0, &(0..h.topo.cpus).collect::<Vec<_>>(), true).unwrap();
    assert_eq!(h.cached_lines(None, false), 0);
    assert!(!h.directory_active());
    reuse_and_churn(&mut h);
    assert_eq!(h.violation_total(), 0);
}

#[test]
fn hazard_clflushopt_host_key_only_helps_with_sme_coherent() {
    for coherent in [false, true] {
        let mut h = guest_dirty_page(coherent);
        h.clflush(0, 0x10000, PAGE, 0, FlushOp::Clflushopt, true).unwrap();
        reuse_and_churn(&mut h);
        let caught = count(&h, Cause::WritebackForeignOwner) > 0;
        assert_eq!(caught, !coherent, "coherent={coherent}");
    }
}

#[test]
fn hazard_vm_page_flush_prevents_it() {
    let mut h = guest_dirty_page(false);
    assert!(h.vm_page_flush(3, 0x10000, GUEST).unwrap());
    assert_eq!(h.cached_lines(Some(GUEST), false), 0);
    reuse_and_churn(&mut h);
    assert_eq!(h.violation_total(), 0);
}

#[test]
fn vm_page_flush_without_the_feature_faults() {
    let mut o = toml::Table::new();
    let mut f = toml::Table::new();
    f.insert("vm_page_flush".into(), toml::Value::Boolean(false));
    o.insert("features".into(), toml::Value::Table(f));
    let cfg = HostConfig::from_profile(sevsim_engine::config::DEFAULT_PROFILE, "tiny", Some(&o)).unwrap();
    let mut h = Host::new(cfg, None).unwrap();
    assert!(!h.vm_page_flush(0, 0, 1).unwrap());
    assert_eq!(h.ctr.faults[0], 1);
}

#[test]
fn hazard_dma_write_after_cached_dirty_line_is_caught_even_with_sme_coherent() {
    for coherent in [false, true] {
        let mut h = guest_dirty_page(coherent);
        h.dma(0x10000, 128, 0, true).unwrap();
        assert_eq!(count(&h, Cause::DmaWriteDirtyLine), 2, "coherent={coherent}");
        let v = h.violations()[0];
        assert_eq!((v.cpu, v.key, v.other_key), (-1, GUEST, 0));
    }
}

#[test]
fn dma_is_coherent_with_same_key_lines() {
    let mut h = tiny(false);
    h.access(0, 0x2000, true, 0);
    h.dma(0x2000, 64, 0, true).unwrap();
    assert!(h.copies(0x2000).unwrap().is_empty());
    assert_eq!(h.violation_total(), 0);
    assert_eq!(h.mem.line_state(0x2000 / 64), (0, 0));
}

#[test]
fn recycled_key_slot_hit_is_isolation_and_writeback_is_corruption() {
    let mut h = tiny(false);
    h.set_owner(0x4000, PAGE, 9).unwrap();
    h.access(0, 0x4000, true, 9);
    h.access(0, 0x4040, false, 9);
    assert_eq!(h.activate(9).unwrap(), 4); // two lines, each in L1 and L2
    h.access(0, 0x4040, false, 9);
    assert_eq!(count(&h, Cause::StaleKeyHit), 1);
    h.wbinvd(0).unwrap();
    assert_eq!(count(&h, Cause::WritebackStaleKey), 1);
}

#[test]
fn wbinvd_on_cpus_costs_and_ipis() {
    let mut h = tiny(false);
    for cpu in 0..8 {
        for l in 0..32u64 {
            h.access(cpu, (cpu as u64) * 0x10000 + l * 64, true, 0);
        }
    }
    let before: Vec<u64> = (0..8).map(|c| h.cycles(c)).collect();
    let t = h.wbinvd_on_cpus(0, &[0, 1, 2, 3, 4, 5, 6, 7], false).unwrap();
    assert_eq!(h.ctr.ipis_sent[0], 7);
    assert!((1..8).all(|c| h.ctr.ipis_received[c] == 1));
    // the initiator waits at least for its own flush and the IPI round trip
    let c = &h.cfg.cost;
    assert!(t >= c.ipi_send_base + c.ipi_latency + c.ipi_ack + c.wbinvd_base);
    assert_eq!(h.cycles(0), before[0] + t);
    for cpu in 1..8 {
        assert!(h.cycles(cpu) > before[cpu]);
        assert!(h.cycles(cpu) - before[cpu] < t, "targets only pay their handler and flush");
    }
    assert_eq!(h.cached_lines(None, true), 0);
    // all-clean caches flush faster than dirty ones
    let t2 = h.wbinvd_on_cpus(0, &[0, 1, 2, 3, 4, 5, 6, 7], false).unwrap();
    assert!(t2 < t);
}

#[test]
fn batch_checks_everything_before_running() {
    let mut h = tiny(false);
    let addr = [0u64, 64, 1 << 40];
    assert!(h.access_batch(Col::One(0), &addr, Col::One(false), Col::One(0), None).is_err());
    assert_eq!(h.ctr.accesses.iter().sum::<u64>(), 0, "nothing ran");
    let e = h.access_batch(Col::Each(&[0, 99]), &[0, 64], Col::One(false), Col::One(0), None).unwrap_err();
    assert!(e.to_string().contains("cpu[1] = 99"), "{e}");
    let e = h.access_batch(Col::Each(&[0]), &[0, 64], Col::One(false), Col::One(0), None).unwrap_err();
    assert_eq!(e.arg(), "cpu");
    let mut lv = [9u8; 2];
    let by = h.access_batch(Col::One(0), &[0, 8], Col::Each(&[true, false]), Col::One(3), Some(&mut lv)).unwrap();
    assert_eq!(lv, [Level::Memory as u8, Level::L1 as u8]);
    assert_eq!(by[0] + by[5], 2);
}

/// Random operations on both tiny variants keep the protocol invariants, and the directory stays a
/// superset of where lines are (every lookup finds them).
#[test]
fn random_operations_keep_invariants() {
    for coherent in [false, true] {
        let mut h = tiny(coherent);
        let mut x: u64 = 0x1234_5678;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let pas: Vec<u64> = (0..48).map(|i| (i % 12) * 0x400 + (i / 12) * 0x40 + 0x100000).collect();
        for step in 0..20_000 {
            let r = next();
            let cpu = (r % 8) as usize;
            let pa = pas[((r >> 8) % pas.len() as u64) as usize];
            let key = ((r >> 16) % 3) as u16;
            match (r >> 24) % 40 {
                0 => {
                    h.wbinvd(cpu).unwrap();
                }
                1 => {
                    h.wbnoinvd(cpu).unwrap();
                }
                2 => {
                    h.clflush(cpu, pa, 64, key, FlushOp::Clflushopt, false).unwrap();
                }
                3 => {
                    h.dma(pa, 64, 0, (r >> 30) & 1 == 1).unwrap();
                }
                _ => {
                    h.access(cpu, pa, (r >> 32) & 1 == 1, key);
                }
            }
            if step % 97 == 0 {
                check_invariants(&h, &pas);
            }
        }
        check_invariants(&h, &pas);
    }
}

/// Case B: host data still dirty in a cache when the page becomes a guest's. Without SME_COHERENT
/// its write-back lands on the guest's page (caught); with it, the guest's own access evicts the
/// host line first, which KVM relies on (sev_clflush_pages() returns early), so nothing is caught.
#[test]
fn host_dirty_line_on_a_page_given_to_a_guest() {
    for coherent in [false, true] {
        let mut h = tiny(coherent);
        h.access(0, 0x30000, true, 0);
        h.set_owner(0x30000, PAGE, GUEST).unwrap();
        h.access(2, 0x30000, false, GUEST);
        h.access(2, 0x30000, true, GUEST);
        for cpu in 0..h.topo.cpus {
            h.wbinvd(cpu).unwrap();
        }
        assert_eq!(h.violation_total() > 0, !coherent, "coherent={coherent}: {:?}", h.violations());
        // either way the guest's write is what memory ends with
        assert_eq!(h.mem.line_state(0x30000 / 64).0, GUEST);
    }
}

/// The AVX2-compiled batch loops (with their geometry-specialised copies) and the portable ones
/// give the same results, bit for bit: a run is reproducible on any x86-64 CPU.
#[test]
fn avx2_and_portable_paths_agree() {
    // the preset's own geometry (12/16/16 ways: a specialised copy) on 2 CCDs of 2 cores, and a
    // 8/16/16 one, with a 4-way run-time geometry as a control
    for (l1, l1ways) in [("48KiB", 12), ("32KiB", 8), ("16KiB", 4)] {
        let o: toml::Table = toml::from_str(&format!(
            "sockets=1\nccds_per_socket=2\ncores_per_ccd=2\nthreads_per_core=2\n[l1d]\nsize=\"{l1}\"\nways={l1ways}\n\
             [l2]\nsize=\"64KiB\"\nways=16\n[l3]\nsize=\"256KiB\"\nways=16\n"
        ))
        .unwrap();
        let build = |avx2: bool| {
            let cfg = HostConfig::from_profile(sevsim_engine::config::DEFAULT_PROFILE, "epyc-9755-2s", Some(&o)).unwrap();
            let mut h = Host::new(cfg, Some(1 << 30)).unwrap();
            h.use_avx2(avx2);
            h
        };
        let (mut a, mut b) = (build(true), build(false));
        let n = 200_000;
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let cpu: Vec<u32> = (0..n).map(|_| (next() % 8) as u32).collect();
        // 4 MiB of lines, shared by all CPUs, under three keys
        let addr: Vec<u64> = (0..n).map(|_| (next() % (4 << 20)) & !7).collect();
        let write: Vec<bool> = (0..n).map(|_| next() % 4 == 0).collect();
        let key: Vec<u16> = (0..n).map(|_| (next() % 3) as u16).collect();
        // translated accesses over more pages than the TLBs hold (their victim searches)
        let pages = 8192u64;
        let va: Vec<u64> = (0..pages).map(|p| 0x7F00_0000_0000 + p * 4096).collect();
        let pa: Vec<u64> = (0..pages).map(|p| (512 << 20) + p * 4096).collect();
        let vaddr: Vec<u64> = (0..n / 2).map(|_| va[(next() % pages) as usize] + (next() % 64) * 64).collect();
        for h in [&mut a, &mut b] {
            h.set_owner(1 << 20, 1 << 20, 1).unwrap();
            h.map_many(0, &va, &pa, PageSize::K4, 0).unwrap();
            for chunk in 0..4 {
                let r = chunk * n / 4..(chunk + 1) * n / 4;
                h.access_batch(Col::Each(&cpu[r.clone()]), &addr[r.clone()], Col::Each(&write[r.clone()]), Col::Each(&key[r.clone()]), None)
                    .unwrap();
                h.wbnoinvd(chunk % 8).unwrap();
                let r = chunk * n / 8..(chunk + 1) * n / 8;
                h.access_virtual_batch(Col::Each(&cpu[r.clone()]), &vaddr[r.clone()], Col::Each(&write[r]), None).unwrap();
            }
        }
        assert!(a.ctr.tlb_misses.iter().sum::<u64>() > 10_000, "the run exercised TLB replacement");
        assert_eq!(a.clocks(), b.clocks(), "l1 {l1ways}-way");
        for ((name, va), (_, vb)) in a.ctr.all().into_iter().zip(b.ctr.all()) {
            assert_eq!(va, vb, "counter {name}, l1 {l1ways}-way");
        }
        assert_eq!(a.violations().len(), b.violations().len());
        assert!(a.violations().iter().zip(b.violations()).all(|(p, q)| p == q));
        assert_eq!(a.l1.data[..], b.l1.data[..]);
        assert_eq!(a.l2.data[..], b.l2.data[..]);
        assert_eq!(a.l3.data[..], b.l3.data[..]);
        assert!(a.violation_total() > 0, "the run exercised the oracle");
        for c in 0..8 {
            assert_eq!(a.tlb_entries(c).unwrap(), b.tlb_entries(c).unwrap(), "TLB of cpu {c}");
        }
    }
}
