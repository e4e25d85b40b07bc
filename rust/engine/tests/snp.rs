//! SEV-SNP: RMP checks at 4K/2M granularity, the direct map split, the named hazard.

use sevsim_engine::host::{Host, Level};
use sevsim_engine::paging::PageSize;
use sevsim_engine::rmp::{RmpState, FAIL_OVERLAP, SUCCESS};
use sevsim_engine::snp::PAGE_OFFSET;
use sevsim_engine::Cause;

fn host() -> Host {
    let mut h = Host::preset("tiny", None).unwrap();
    h.snp_enable().unwrap();
    h
}

fn private(asid: u16, gpa: u64, huge: bool) -> RmpState {
    RmpState { assigned: true, huge, asid, gpa, immutable: false }
}

fn count(h: &Host, c: Cause) -> u64 {
    h.cause_counts().into_iter().find(|(k, _)| *k == c).unwrap().1
}

#[test]
fn direct_map_is_built_with_the_largest_leaves() {
    let h = Host::preset("epyc-9755-2s", Some(1536 << 30)).unwrap();
    assert_eq!(h.lookup_address(PAGE_OFFSET), Some(PageSize::G1));
    assert_eq!(h.lookup_address(PAGE_OFFSET + (1535 << 30)), Some(PageSize::G1));
    assert_eq!(h.table(0).unwrap().leaves(), 1536);
    let t = Host::preset("tiny", None).unwrap(); // 64 MiB: 2 MiB leaves
    assert_eq!(t.lookup_address(PAGE_OFFSET + 0x1000), Some(PageSize::M2));
}

#[test]
fn host_write_through_a_large_mapping_near_a_private_4k_page_faults() {
    let mut h = host();
    assert_eq!(h.rmpupdate(0, 0x20_3000, private(5, 0x1000, false)).unwrap(), SUCCESS);
    // the neighbour page 0x20_5000 is the hypervisor's, but the direct map is 2 MiB there
    assert_eq!(h.access(1, 0x20_5000, true, 0), Level::Fault);
    assert_eq!(count(&h, Cause::RmpHostWriteLargeMapping), 1);
    // reads are never blocked
    assert_eq!(h.access(1, 0x20_5000, false, 0), Level::Memory);
    // after the split only the private page itself faults
    h.set_memory_4k(0, PAGE_OFFSET + 0x20_3000).unwrap();
    assert_eq!(h.lookup_address(PAGE_OFFSET + 0x20_5000), Some(PageSize::K4));
    assert_ne!(h.access(1, 0x20_5000, true, 0), Level::Fault);
    assert_eq!(h.access(1, 0x20_3000, true, 0), Level::Fault);
    assert_eq!(count(&h, Cause::RmpHostWriteAssigned), 1);
}

#[test]
fn split_once_and_its_costs() {
    let mut h = host();
    for cpu in 0..8 {
        h.access(cpu, 0x100000, false, 0); // nothing in TLBs, but every CPU will be IPI'd anyway
    }
    let c = h.set_memory_4k(3, PAGE_OFFSET + 0x40_0000).unwrap();
    assert!(c > 0);
    assert_eq!(h.ctr.dm_splits[3], 1);
    assert_eq!(h.ctr.ipis_sent[3], 7, "flush_tlb_all IPIs every other CPU");
    // a second split of the same region costs nothing
    assert_eq!(h.set_memory_4k(3, PAGE_OFFSET + 0x40_1000).unwrap(), 0);
    assert_eq!(h.ctr.dm_splits[3], 1);
    // cpa_lock: a CPU whose clock is behind the lock's release waits for it
    let before = h.cycles(5);
    h.set_memory_4k(5, PAGE_OFFSET + 0x60_0000).unwrap();
    assert!(h.ctr.cpa_wait_cycles[5] > 0);
    assert!(h.cycles(5) > before);
}

#[test]
fn a_1g_leaf_splits_twice() {
    let mut h = Host::preset("tiny", Some(2 << 30)).unwrap();
    assert_eq!(h.lookup_address(PAGE_OFFSET + (1 << 30)), Some(PageSize::G1));
    h.set_memory_4k(0, PAGE_OFFSET + (1 << 30) + 0x1000).unwrap();
    assert_eq!(h.ctr.dm_splits[0], 2);
    assert_eq!(h.lookup_address(PAGE_OFFSET + (1 << 30)), Some(PageSize::K4));
    assert_eq!(h.lookup_address(PAGE_OFFSET + (1 << 30) + (2 << 20)), Some(PageSize::M2));
}

/// The named hazard: an on-demand split policy that forgets the split before making a 4 KiB page
/// private is caught by an rmp_fault on the next host write nearby; skipping the split for a
/// 2 MiB private entry is correctly not a fault.
#[test]
fn hazard_forgotten_split() {
    for split in [false, true] {
        let mut h = host();
        if split {
            h.set_memory_4k(0, PAGE_OFFSET + 0x20_0000).unwrap();
        }
        h.rmpupdate(0, 0x20_0000, private(5, 0x20_0000, false)).unwrap();
        h.access(1, 0x20_1000, true, 0); // the host writes the next page (slab, page allocator)
        assert_eq!(h.violation_total() > 0, !split, "split={split}");
    }
    let mut h = host();
    assert_eq!(h.rmpupdate(0, 0x40_0000, private(6, 0x40_0000, true)).unwrap(), SUCCESS);
    h.access(1, 0x60_0000, true, 0); // the next 2 MiB region, through the same 2 MiB-leaf direct map
    h.access(1, 0x3F_F000, true, 0); // and the previous one
    assert_eq!(h.violation_total(), 0);
}

#[test]
fn guest_private_accesses_need_assigned_and_validated() {
    let mut h = host();
    h.snp_set_asid(5, true).unwrap();
    h.rmpupdate(0, 0x30_0000, private(5, 0x1000, false)).unwrap();
    assert_eq!(h.access(2, 0x30_0000, false, 5), Level::Fault);
    assert_eq!(count(&h, Cause::RmpGuestNotValidated), 1);
    assert_eq!(h.pvalidate(2, 5, 0x30_0000, 0x1000, false, true).unwrap(), (SUCCESS, true));
    assert_ne!(h.access(2, 0x30_0000, true, 5), Level::Fault);
    assert_eq!(h.access(2, 0x31_0000, false, 5), Level::Fault); // not its page
    assert_eq!(count(&h, Cause::RmpGuestNotOwned), 1);
    // an RMPUPDATE clears Validated
    h.rmpupdate(0, 0x30_0000, private(5, 0x1000, false)).unwrap();
    assert!(!h.rmp_entry(0x30_0000).unwrap().validated);
    // a 2 MiB entry over the region that holds that 4K entry, and a 4K one inside a 2M entry
    assert_eq!(h.rmpupdate(0, 0x20_0000, private(5, 0, true)).unwrap(), FAIL_OVERLAP);
    assert_eq!(h.rmpupdate(0, 0x40_0000, private(5, 0, true)).unwrap(), SUCCESS);
    assert_eq!(h.rmpupdate(0, 0x40_1000, private(5, 0, false)).unwrap(), FAIL_OVERLAP);
}

#[test]
fn clearing_pages_contends_for_socket_bandwidth() {
    let mut h = Host::preset("epyc-9755-2s", Some(64 << 30)).unwrap();
    let alone = h.clear_pages(0, 0, 2 << 20).unwrap();
    // enough CPUs of socket 0 clearing 2 MiB each at the same time to ask for 4x the socket's
    // bandwidth: it is shared, so the last to finish takes several times as long as one alone
    let (core, socket) = (h.cfg.snp.core_clear_gbps, h.cfg.snp.socket_clear_gbps);
    let t = &h.topo;
    let socket_of = |cpu: usize| t.ccd_socket[t.core_ccd[t.cpu_core[cpu] as usize] as usize];
    let socket0: Vec<usize> = (1..t.cpus).filter(|&c| socket_of(c) == 0).collect();
    let other = (0..t.cpus).find(|&c| socket_of(c) == 1).unwrap();
    let n = ((4.0 * socket / core).ceil() as usize + 1).min(socket0.len());
    assert!(n as f64 * core >= 3.0 * socket, "the preset has too few CPUs per socket for this test");
    let mut worst = 0;
    for (i, &cpu) in socket0[..n].iter().enumerate() {
        worst = worst.max(h.clear_pages(cpu, (i as u64 + 1) << 21, 2 << 20).unwrap());
    }
    assert!(worst > 3 * alone, "alone {alone}, worst {worst} with {n} CPUs");
    // a CPU of the other socket is not slowed
    assert_eq!(h.clear_pages(other, 0x4000_0000, 2 << 20).unwrap(), alone);
}

/// An SNP guest (ASID 5) whose GVA 0x40_0000 maps GPA 0x20_0000 (2 MiB, C-bit), backed by a
/// 2 MiB nested leaf at HPA 0x60_0000.
fn snp_guest() -> (Host, u32) {
    use sevsim_engine::paging::{TableKind, F_CBIT};
    use sevsim_engine::tlb::{Context, Mode};
    let mut h = host();
    h.snp_set_asid(5, true).unwrap();
    let gt = h.create_table(TableKind::Guest);
    h.map(gt, 0x40_0000, 0x20_0000, PageSize::M2, F_CBIT).unwrap();
    let nt = h.create_table(TableKind::Nested);
    h.map(nt, 0x20_0000, 0x60_0000, PageSize::M2, 0).unwrap();
    let ctx = h.create_context(Context { mode: Mode::Svm, tag: 5, pcid: 0, pcide: true, cr3: gt, nested: nt, key: 5, vm: 1 }).unwrap();
    (h, ctx)
}

/// Through the translated path the guest-side checks also compare the GPA and the nested mapping's
/// size: a 2 MiB NPT leaf over 4 KiB RMP entries is a #NPF with SIZEM (KVM caps the NPT level at
/// the RMP level, sev_gmem_max_mapping_level()).
#[test]
fn guest_translation_checks_gpa_and_nested_size() {
    use sevsim_engine::translate::Translated;
    let (mut h, ctx) = snp_guest();
    // 4 KiB RMP entries under a 2 MiB nested leaf
    for k in 0..512u64 {
        h.rmpupdate(0, 0x60_0000 + k * 4096, private(5, 0x20_0000 + k * 4096, false)).unwrap();
        h.pvalidate(0, 5, 0x60_0000 + k * 4096, 0x20_0000 + k * 4096, false, true).unwrap();
    }
    h.vmrun(1, ctx, 0).unwrap();
    assert_eq!(h.translate(1, 0x40_1000), Translated::RmpFault);
    assert_eq!(count(&h, Cause::RmpGuestSizeMismatch), 1);
    // a 2 MiB RMP entry at the wrong GPA: not the guest's page
    let (mut h, ctx) = snp_guest();
    h.rmpupdate(0, 0x60_0000, private(5, 0x80_0000, true)).unwrap();
    h.vmrun(1, ctx, 0).unwrap();
    assert_eq!(h.translate(1, 0x40_1000), Translated::RmpFault);
    assert_eq!(count(&h, Cause::RmpGuestNotOwned), 1);
    // the right GPA, validated: the access goes through, under the guest's key
    h.rmpupdate(0, 0x60_0000, private(5, 0x20_0000, true)).unwrap();
    h.pvalidate(1, 5, 0x60_0000, 0x20_0000, true, true).unwrap();
    assert_eq!(h.translate(1, 0x40_1000), Translated::Ok { pa: 0x60_1000, key: 5 });
}
