//! SNP at host scale: the compact direct map, RMP checks at the size of the translation used,
//! flush_tlb_all() the IPI or the INVLPGB way.

use sevsim_engine::directmap::{KernelFlush, PAGE_OFFSET};
use sevsim_engine::host::{Col, Host, Level};
use sevsim_engine::paging::PageSize;
use sevsim_engine::rmp::{RmpState, SUCCESS};
use sevsim_engine::translate::Translated;
use sevsim_engine::Cause;

fn host() -> Host {
    let mut h = Host::preset("tiny", None).unwrap();
    h.snp_enable().unwrap();
    h
}

fn private(asid: u16, gpa: u64) -> RmpState {
    RmpState { assigned: true, huge: false, asid, gpa, immutable: false }
}

fn count(h: &Host, c: Cause) -> u64 {
    h.cause_counts().into_iter().find(|(k, _)| *k == c).unwrap().1
}

#[test]
fn presplit_1_5_tib_is_cheap_and_walks_at_4k() {
    let mut h = Host::preset("epyc-9755-2s", Some(1536 << 30)).unwrap();
    let before = h.heap_bytes();
    assert_eq!(h.direct_map_presplit(), (1536, 1536 * 512));
    assert_eq!(h.heap_bytes(), before, "pre-splitting allocates nothing");
    assert!(h.direct_map_bytes() < 128 << 10);
    assert_eq!(h.lookup_address(PAGE_OFFSET + (1 << 40) + 0x1234), Some(PageSize::K4));
    assert_eq!(h.table(0).unwrap().leaves() as u64, (1536u64 << 30) >> 12);
    // a walk of a direct-map address gives the identity frame, a 4 KiB TLB entry
    assert_eq!(h.translate(0, PAGE_OFFSET + 0x1234_5678), Translated::Ok { pa: 0x1234_5678, key: 0 });
    let e = h.tlb_entries(0).unwrap();
    assert!(e.iter().any(|(_, en, a)| *a == PAGE_OFFSET + 0x1234_5000 && en.size == PageSize::K4 as u8));
    assert_eq!(h.ctr.dm_splits.iter().sum::<u64>(), 0, "a boot-time state, not CPA operations");
}

#[test]
fn batch_split_counts_per_element() {
    let mut h = Host::preset("tiny", Some(2 << 30)).unwrap();
    // 1 GiB leaf: two splits; the same 2 MiB again: none; the next 2 MiB of that GiB: one
    let pa = [(1u64 << 30) + 0x5000, (1 << 30) + 0x9000, (1 << 30) + (2 << 20)];
    let mut s = [9u8; 3];
    let c = h.set_memory_4k_batch(0, &pa, KernelFlush::Ipi, &mut s).unwrap();
    assert_eq!(s, [2, 0, 1]);
    assert!(c > 0);
    assert_eq!(h.ctr.dm_splits[0], 3);
    assert_eq!(h.ctr.kernel_flushes[0], 3);
    assert_eq!(h.direct_map_leaves(), [1024, 510, 1]);
    // a bad address changes nothing
    let mut s2 = [0u8; 2];
    assert!(h.set_memory_4k_batch(0, &[0, 4 << 30], KernelFlush::Ipi, &mut s2).is_err());
    assert_eq!(h.direct_map_leaf(0).unwrap(), PageSize::G1);
}

/// A host write through a 2 MiB direct-map TLB entry still cached after a split without a flush
/// is checked at 2 MiB and faults when the region holds a guest-private 4 KiB page; after a split
/// with the flush the same write is clean. A CPU that never cached the large entry is clean either way.
#[test]
fn rmp_check_at_the_size_of_the_cached_translation() {
    for flush in [KernelFlush::Skip, KernelFlush::Ipi, KernelFlush::Invlpgb] {
        let mut h = host();
        // CPU 1 touches the hypervisor page 0x40_5000 through the direct map: a 2 MiB entry
        assert!(matches!(h.translate(1, PAGE_OFFSET + 0x40_5000), Translated::Ok { .. }));
        h.set_memory_4k_with(0, PAGE_OFFSET + 0x40_3000, flush).unwrap();
        assert_eq!(h.lookup_address(PAGE_OFFSET + 0x40_5000), Some(PageSize::K4));
        assert_eq!(h.rmpupdate(0, 0x40_3000, private(5, 0x1000)).unwrap(), SUCCESS);
        let stale = flush == KernelFlush::Skip;
        // the physical access path (a kernel write through __va())
        let l = h.access(1, 0x40_5000, true, 0);
        assert_eq!(l == Level::Fault, stale, "{flush:?}");
        assert_eq!(count(&h, Cause::RmpHostWriteLargeMapping), stale as u64);
        // the translated path through the same VA
        let r = h.access_virtual_batch(Col::One(1), &[PAGE_OFFSET + 0x40_6000], Col::One(true), None).unwrap();
        assert_eq!(r[6], stale as u64, "{flush:?}");
        // a CPU on another core that never cached the 2 MiB entry walks the 4 KiB leaf: clean
        let other = h.topo.cores - 1;
        assert_ne!(h.access(other, 0x40_5000, true, 0), Level::Fault);
        // the private page itself faults through any mapping
        assert_eq!(h.access(other, 0x40_3000, true, 0), Level::Fault);
    }
}

#[test]
fn splits_flush_with_the_chosen_method() {
    let mut ipi = host();
    let mut inv = host();
    let ci = ipi.set_memory_4k_with(0, PAGE_OFFSET + 0x20_0000, KernelFlush::Ipi).unwrap().0;
    let cb = inv.set_memory_4k_with(0, PAGE_OFFSET + 0x20_0000, KernelFlush::Invlpgb).unwrap().0;
    assert_eq!(ipi.ctr.ipis_sent[0], ipi.topo.cpus as u64 - 1);
    assert_eq!(inv.ctr.ipis_sent[0], 0);
    assert!(cb < ci);
    assert_eq!(ipi.ctr.cpa_hold_cycles[0], ci - ipi.cfg.snp.alloc_4k as u64);
}

#[test]
fn unmapping_the_direct_map_is_refused() {
    let mut h = host();
    assert!(h.unmap(0, PAGE_OFFSET + 0x1000).is_err());
    assert_eq!(h.lookup_address(PAGE_OFFSET + 0x1000), Some(PageSize::M2));
}

#[test]
fn a_split_direct_map_taxes_host_clears_and_kernel_data() {
    let mut big = Host::preset("epyc-9755-2s", Some(64 << 30)).unwrap();
    let mut split = Host::preset("epyc-9755-2s", Some(64 << 30)).unwrap();
    split.direct_map_presplit();
    let a = big.clear_pages(0, 2 << 30, 2 << 20).unwrap();
    let b = split.clear_pages(0, 2 << 30, 2 << 20).unwrap();
    assert_eq!(big.ctr.dm_walks[0], 1);
    assert_eq!(split.ctr.dm_walks[0], 512);
    let w4 = split.cfg.snp.dm_walk_4k as u64;
    assert!(b > a && b - a >= 511 * w4 - 1 && b - a <= 512 * w4 + 1, "{a} {b}");
    // kernel data: one walk per distinct leaf
    let pa: Vec<u64> = (0..150u64).map(|i| (i % 50) * 4096 * 7 + (1 << 30)).collect();
    assert_eq!(big.direct_map_walks(1, &pa).unwrap().0, 1);
    assert_eq!(split.direct_map_walks(1, &pa).unwrap().0, 50);
    // a page list clears the same as its pages one by one
    let mut h1 = Host::preset("epyc-9755-2s", Some(64 << 30)).unwrap();
    let mut h2 = Host::preset("epyc-9755-2s", Some(64 << 30)).unwrap();
    h1.direct_map_presplit();
    h2.direct_map_presplit();
    let pages: Vec<u64> = (0..8u64).map(|i| (3 << 30) + i * 8192).collect();
    let l = h1.clear_page_list(0, &pages, PageSize::K4).unwrap();
    let one: u64 = pages.iter().map(|&p| h2.clear_pages(0, p, 4096).unwrap()).sum();
    assert_eq!(l, one, "4 KiB leaves: a walk per page either way");
    assert!(h1.clear_page_list(0, &[4096 + 1], PageSize::K4).is_err());
}

#[test]
fn a_busy_socket_slows_memory_bound_work() {
    let mut h = Host::preset("epyc-9755-2s", Some(64 << 30)).unwrap();
    let t = &h.topo;
    let socket_of = |cpu: usize| t.ccd_socket[t.core_ccd[t.cpu_core[cpu] as usize] as usize];
    let s0: Vec<usize> = (0..t.cpus).filter(|&c| socket_of(c) == 0).collect();
    let other = (0..t.cpus).find(|&c| socket_of(c) == 1).unwrap();
    assert_eq!(h.memory_factor(s0[0]).unwrap(), 1.0);
    let idle = h.spend_memory_bound(s0[1], 10_000).unwrap();
    assert_eq!(idle, 10_000);
    // traffic the engine does not model step by step fills the socket's window
    h.add_memory_traffic(s0[0], 60 << 20).unwrap();
    let rho = h.socket_utilisation(s0[2]).unwrap();
    assert!(rho > 0.3 && rho <= 0.95, "{rho}");
    let beta = h.memory_factor(s0[2]).unwrap();
    assert!(beta > 1.1, "{beta}");
    assert!(h.spend_memory_bound(s0[2], 10_000).unwrap() > 10_000);
    // a clear on the busy socket is slower than the same clear on the other one
    let busy = h.clear_pages(s0[3], 0, 2 << 20).unwrap();
    let calm = h.clear_pages(other, 2 << 20, 2 << 20).unwrap();
    assert!(busy > calm, "{busy} {calm}");
    assert_eq!(h.memory_factor(other).unwrap() < beta, true);
}

#[test]
fn npf_exits_in_one_call() {
    let mut h = host();
    let c = h.npf_exits(2, 511).unwrap();
    assert_eq!(c, 511 * h.cfg.snp.npf_exit as u64);
    assert_eq!(h.ctr.npf_exits[2], 511);
    h.npf_exit(2).unwrap();
    assert_eq!(h.ctr.npf_exits[2], 512);
}

#[test]
fn a_socket_moves_at_most_its_bandwidth_and_calls_need_no_time_order() {
    // 64 cores of one socket each clearing 2 MiB at once: together at most the socket's
    // bandwidth (the last finishes no earlier than the bytes over socket_clear_gbps), each alone
    // at its core's rate
    let mut h = Host::preset("epyc-9755-2s", Some(64 << 30)).unwrap();
    let t = h.topo.clone();
    let socket_of = |cpu: usize| t.ccd_socket[t.core_ccd[t.cpu_core[cpu] as usize] as usize];
    let s0: Vec<usize> = (0..t.cpus).filter(|&c| socket_of(c) == 0 && t.cpu_core[c] as usize % 2 == 0).take(64).collect();
    assert_eq!(s0.len(), 64);
    let (f, core, sock) = (h.cfg.freq_ghz, h.cfg.snp.core_clear_gbps, h.cfg.snp.socket_clear_gbps);
    let mut ends = vec![];
    for (i, &c) in s0.iter().enumerate() {
        ends.push(h.clear_pages(c, (i as u64) << 21, 2 << 20).unwrap());
    }
    let alone = (2u64 << 20) as f64 / (core / f);
    let floor = (64u64 << 21) as f64 / (sock / f);
    let last = *ends.iter().max().unwrap() as f64;
    assert!(ends[0] as f64 >= alone && (ends[0] as f64) < alone * 1.01, "{} {alone}", ends[0]);
    assert!(last >= floor * 0.99, "{last} < {floor}: more than the socket's bandwidth");
    assert!(last > alone * 1.5, "64 x 12 GB/s must exceed the socket");
    // a clear issued after one far ahead in simulated time, at an earlier time, is not queued
    // behind it (the socket is idle at its time)
    let mut h = Host::preset("epyc-9755-2s", Some(64 << 30)).unwrap();
    h.spend(s0[0], 10_000_000).unwrap();
    h.clear_pages(s0[0], 0, 2 << 20).unwrap();
    let early = h.clear_pages(s0[1], 2 << 20, 2 << 20).unwrap() as f64;
    assert!(early < alone * 1.01, "{early} vs {alone}");
}

#[test]
fn a_clear_on_an_absurdly_slow_socket_ends() {
    // a profile with a tiny socket bandwidth: the window-by-window fill stops after the ring's
    // windows and charges the rest at that rate (bounded work, a finite and huge time)
    let mut cfg = Host::preset("tiny", None).unwrap().cfg.clone();
    cfg.snp.socket_clear_gbps = 1e-6;
    let mut h = Host::new(cfg, None).unwrap();
    let c = h.clear_pages(0, 0, 2 << 20).unwrap();
    assert!(c > 1_000_000_000_000, "{c}");
}
