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
