//! TLB engine: what each invalidation drops (table-driven), the hazards the oracle catches.

use sevsim_engine::host::Host;
use sevsim_engine::paging::{PageSize, TableKind, F_CBIT, F_GLOBAL};
use sevsim_engine::tlb::{Context, Entry, Invlpgb, Mode, CAT_COMBINED, CAT_GPHYS, CAT_LINEAR, DOM_HOST, DOM_SVM, DOM_VMX};
use sevsim_engine::translate::{Translated, VmrunResult};
use sevsim_engine::{Cause, HostConfig};

fn host() -> Host {
    // large enough that nothing is evicted in these tests
    let o: toml::Table = toml::from_str("[tlb]\nl1_entries = 64\nl2_entries = 256\nl2_ways = 64\n").unwrap();
    let cfg = HostConfig::from_profile(sevsim_engine::config::DEFAULT_PROFILE, "tiny", Some(&o)).unwrap();
    Host::new(cfg, None).unwrap()
}

const VA: u64 = 0x40_0000;
const VA2: u64 = 0x80_0000;
const GLOBAL_VA: u64 = 0xffff_8000_0000_0000;

/// A guest: guest table GVA -> GPA and nested table GPA -> HPA for two pages (one global).
struct Guest {
    ctx: u32,
    nested: u32,
}

fn guest(h: &mut Host, mode: Mode, tag: u16, hpa: u64, vm: u32, nested: Option<u32>) -> Guest {
    let gt = h.create_table(TableKind::Guest);
    h.map(gt, VA, 0x1000, PageSize::K4, 0).unwrap();
    h.map(gt, VA2, 0x2000, PageSize::K4, F_GLOBAL).unwrap();
    let nt = match nested {
        Some(n) => n,
        None => {
            let nt = h.create_table(TableKind::Nested);
            h.map(nt, 0x1000, hpa, PageSize::K4, 0).unwrap();
            h.map(nt, 0x2000, hpa + 0x1000, PageSize::K4, 0).unwrap();
            nt
        }
    };
    let ctx = h.create_context(Context { mode, tag, pcid: 0, pcide: true, cr3: gt, nested: nt, key: 0, vm }).unwrap();
    Guest { ctx, nested: nt }
}

fn run_guest(h: &mut Host, cpu: usize, g: &Guest, mode: Mode) {
    match mode {
        Mode::Svm => assert_eq!(h.vmrun(cpu, g.ctx, 0).unwrap(), VmrunResult::Entered),
        Mode::Vmx => h.vmentry(cpu, g.ctx).unwrap(),
        Mode::Host => unreachable!(),
    }
    for va in [VA, VA2] {
        assert!(matches!(h.translate(cpu, va), Translated::Ok { .. }));
    }
    h.vmexit(cpu).unwrap();
}

/// Fill CPU 0's TLB with: host linear entries (one global), SVM ASIDs 1 and 2 (combined +
/// guest-physical, one global each), VMX VPIDs 1 (two EPT roots) and 2.
struct World {
    h: Host,
    vmx1_ept: u32,
}

fn world() -> World {
    let mut h = host();
    h.map(0, VA, 0x10_0000, PageSize::K4, 0).unwrap();
    h.map(0, GLOBAL_VA, 0x20_0000, PageSize::M2, F_GLOBAL).unwrap();
    for va in [VA, GLOBAL_VA] {
        assert!(matches!(h.translate(0, va), Translated::Ok { .. }));
    }
    let s1 = guest(&mut h, Mode::Svm, 1, 0x30_0000, 1, None);
    let s2 = guest(&mut h, Mode::Svm, 2, 0x40_0000, 2, None);
    let v1 = guest(&mut h, Mode::Vmx, 1, 0x50_0000, 3, None);
    let v1b = guest(&mut h, Mode::Vmx, 1, 0x60_0000, 3, None); // same VPID, another EPT root
    let v2 = guest(&mut h, Mode::Vmx, 2, 0x70_0000, 4, None);
    for (g, m) in [(&s1, Mode::Svm), (&s2, Mode::Svm), (&v1, Mode::Vmx), (&v1b, Mode::Vmx), (&v2, Mode::Vmx)] {
        run_guest(&mut h, 0, g, m);
    }
    World { h, vmx1_ept: v1.nested }
}

/// A compact description of an entry: (domain, tag, category, eptp, global, address).
type Desc = (u8, u16, u8, u32, bool, u64);

fn l2_entries(h: &Host) -> Vec<Desc> {
    let mut v: Vec<Desc> = h
        .tlb_entries(0)
        .unwrap()
        .into_iter()
        .filter(|(lvl, _, _)| *lvl == 2)
        .map(|(_, e, a): (u8, Entry, u64)| (e.dom, e.tag, e.cat, e.eptp, e.flags & F_GLOBAL != 0, a))
        .collect();
    v.sort();
    v
}

#[test]
fn every_invalidation_drops_exactly_its_scope() {
    let base = world();
    let all = l2_entries(&base.h);
    let e1 = base.vmx1_ept;
    // 2 host + SVM 2x(2 combined + 2 gphys) + VMX 3x(2 combined + 2 gphys)
    assert_eq!(all.len(), 2 + 8 + 12, "{all:?}");
    type Op = Box<dyn Fn(&mut Host)>;
    type Keep = Box<dyn Fn(&Desc) -> bool>;
    let cases: Vec<(&str, Op, Keep)> = vec![
        ("invept single", Box::new(move |h| { h.invept(0, 1, e1).unwrap().unwrap(); }),
            Box::new(move |d| !(d.0 == DOM_VMX && d.2 != CAT_LINEAR && d.3 == e1))),
        ("invept all", Box::new(|h| { h.invept(0, 2, 0).unwrap().unwrap(); }),
            Box::new(|d| !(d.0 == DOM_VMX && d.2 != CAT_LINEAR))),
        ("invvpid single 1", Box::new(|h| { h.invvpid(0, 1, 1, 0).unwrap().unwrap(); }),
            Box::new(|d| !(d.0 == DOM_VMX && d.1 == 1 && d.2 == CAT_COMBINED))),
        ("invvpid all", Box::new(|h| { h.invvpid(0, 2, 0, 0).unwrap().unwrap(); }),
            Box::new(|d| !(d.0 == DOM_VMX && d.2 == CAT_COMBINED))),
        ("invvpid address", Box::new(|h| { h.invvpid(0, 0, 1, VA).unwrap().unwrap(); }),
            Box::new(|d| !(d.0 == DOM_VMX && d.1 == 1 && d.2 == CAT_COMBINED && d.5 == VA))),
        ("invvpid retain globals", Box::new(|h| { h.invvpid(0, 3, 1, 0).unwrap().unwrap(); }),
            Box::new(|d| !(d.0 == DOM_VMX && d.1 == 1 && d.2 == CAT_COMBINED && !d.4))),
        ("vmrun flush_asid", Box::new(|h| {
            let c = h.create_context(Context { mode: Mode::Svm, tag: 1, pcid: 0, pcide: true, cr3: 1, nested: 2, key: 0, vm: 1 }).unwrap();
            h.vmrun(0, c, 3).unwrap(); h.vmexit(0).unwrap(); }),
            Box::new(|d| !(d.0 == DOM_SVM && d.1 == 1))),
        ("vmrun flush_asid_local", Box::new(|h| {
            let c = h.create_context(Context { mode: Mode::Svm, tag: 1, pcid: 0, pcide: true, cr3: 1, nested: 2, key: 0, vm: 1 }).unwrap();
            h.vmrun(0, c, 7).unwrap(); h.vmexit(0).unwrap(); }),
            Box::new(|d| !(d.0 == DOM_SVM && d.1 == 1 && !d.4))),
        ("vmrun flush_all_asid", Box::new(|h| {
            let c = h.create_context(Context { mode: Mode::Svm, tag: 1, pcid: 0, pcide: true, cr3: 1, nested: 2, key: 0, vm: 1 }).unwrap();
            h.vmrun(0, c, 1).unwrap(); h.vmexit(0).unwrap(); }),
            Box::new(|_| false)),
        ("vmrun do_nothing", Box::new(|h| {
            let c = h.create_context(Context { mode: Mode::Svm, tag: 1, pcid: 0, pcide: true, cr3: 1, nested: 2, key: 0, vm: 1 }).unwrap();
            h.vmrun(0, c, 0).unwrap(); h.vmexit(0).unwrap(); }),
            Box::new(|_| true)),
        ("invlpga", Box::new(|h| { h.invlpga(0, VA, 2).unwrap(); }),
            Box::new(|d| !(d.0 == DOM_SVM && d.1 == 2 && d.2 == CAT_COMBINED && d.5 == VA))),
        ("host invlpg", Box::new(|h| { h.invlpg(0, VA).unwrap(); }),
            Box::new(|d| !(d.0 == DOM_HOST && d.5 == VA))),
        ("host invlpg of a global page", Box::new(|h| { h.invlpg(0, GLOBAL_VA).unwrap(); }),
            Box::new(|d| !(d.0 == DOM_HOST && d.4))),
        ("host mov cr3", Box::new(|h| { h.mov_cr3(0, 0, 0, false).unwrap(); }),
            Box::new(|d| !(d.0 == DOM_HOST && !d.4))),
        ("host mov cr3 noflush", Box::new(|h| { h.mov_cr3(0, 0, 0, true).unwrap(); }),
            Box::new(|_| true)),
        ("invpcid all incl. globals", Box::new(|h| { h.invpcid(0, 2, 0, 0).unwrap().unwrap(); }),
            Box::new(|d| d.0 != DOM_HOST)),
        ("invpcid all but globals", Box::new(|h| { h.invpcid(0, 3, 0, 0).unwrap().unwrap(); }),
            Box::new(|d| !(d.0 == DOM_HOST && !d.4))),
        ("invpcid address", Box::new(|h| { h.invpcid(0, 0, 0, VA).unwrap().unwrap(); }),
            Box::new(|d| !(d.0 == DOM_HOST && d.5 == VA))),
        ("invlpgb asid 1 + nested, then tlbsync", Box::new(|h| {
            h.invlpgb(0, Invlpgb { va: None, pcid: None, asid: Some(1), include_global: true, final_only: false,
                                   include_nested: true, count: 1, stride_2m: false }).unwrap();
            h.tlbsync(0).unwrap(); }),
            Box::new(|d| !(d.0 == DOM_SVM && d.1 == 1))),
        ("invlpgb host va, no globals", Box::new(|h| {
            h.invlpgb(1, Invlpgb { va: Some(VA), pcid: None, asid: None, include_global: false, final_only: true,
                                   include_nested: false, count: 1, stride_2m: false }).unwrap();
            h.tlbsync(1).unwrap(); }),
            Box::new(|d| !(d.0 == DOM_HOST && d.5 == VA))),
        ("invlpgb without tlbsync does nothing yet", Box::new(|h| {
            h.invlpgb(1, Invlpgb { va: None, pcid: None, asid: Some(2), include_global: true, final_only: false,
                                   include_nested: true, count: 1, stride_2m: false }).unwrap(); }),
            Box::new(|_| true)),
    ];
    for (name, op, keep) in cases {
        let mut w = world();
        op(&mut w.h);
        let want: Vec<Desc> = all.iter().copied().filter(|d| keep(d)).collect();
        assert_eq!(l2_entries(&w.h), want, "{name}");
    }
}

#[test]
fn bad_world_switches_fail_like_the_hardware() {
    let mut h = host();
    let g = guest(&mut h, Mode::Svm, 0, 0x30_0000, 1, None);
    assert_eq!(h.vmrun(0, g.ctx, 0).unwrap(), VmrunResult::VmexitInvalid); // ASID 0
    let g = guest(&mut h, Mode::Svm, 5, 0x30_0000, 1, None);
    assert_eq!(h.vmrun(0, g.ctx, 2).unwrap(), VmrunResult::VmexitInvalid); // undefined TLB_CONTROL
    assert_eq!(h.current_context(0), 0, "the guest was not entered");
    assert_eq!(h.ctr.vmrun_failures[0], 2);
    assert_eq!(h.invvpid(0, 1, 0, 0).unwrap(), None); // VPID 0 single-context: VMfail
    assert_eq!(h.invept(0, 7, 0).unwrap(), None);
    assert_eq!(h.invpcid(0, 9, 0, 0).unwrap(), None);
    assert_eq!(h.invlpg(0, 0x0000_8000_0000_0000).unwrap(), 0); // non-canonical: a NOP (SDM vol. 2A INVLPG)
}

#[test]
fn hazard_remap_without_invlpg_is_a_stale_translation() {
    for flush in [false, true] {
        let mut h = host();
        let g = guest(&mut h, Mode::Svm, 3, 0x30_0000, 1, None);
        h.vmrun(0, g.ctx, 0).unwrap();
        assert_eq!(h.translate(0, VA), Translated::Ok { pa: 0x30_0000, key: 0 });
        // the guest points VA at another GPA
        let gt = h.context(g.ctx).unwrap().cr3;
        h.unmap(gt, VA).unwrap();
        h.map(gt, VA, 0x2000, PageSize::K4, 0).unwrap();
        if flush {
            h.invlpg(0, VA).unwrap();
        }
        let t = h.translate(0, VA);
        let stale = h.cause_counts().into_iter().find(|(c, _)| *c == Cause::StaleTranslation).unwrap().1;
        if flush {
            assert_eq!(t, Translated::Ok { pa: 0x30_1000, key: 0 });
            assert_eq!(stale, 0);
        } else {
            assert_eq!(t, Translated::Ok { pa: 0x30_0000, key: 0 }, "the hardware uses the stale entry");
            assert_eq!(stale, 1);
            let v = h.violations()[0];
            assert_eq!((v.va, v.pa, v.true_pa, v.ctx), (VA, 0x30_0000, 0x30_1000, g.ctx));
        }
    }
}

#[test]
fn hazard_two_vcpus_one_asid_same_cpu_without_flush() {
    for tlb_control in [0u8, 3] {
        let mut h = host();
        let a = guest(&mut h, Mode::Svm, 4, 0x30_0000, 1, None);
        // vCPU B of the same VM: same ASID and NPT, its own guest page table mapping VA elsewhere
        let gt_b = h.create_table(TableKind::Guest);
        h.map(gt_b, VA, 0x2000, PageSize::K4, 0).unwrap();
        let b = h.create_context(Context { mode: Mode::Svm, tag: 4, pcid: 0, pcide: true, cr3: gt_b, nested: a.nested, key: 0, vm: 1 }).unwrap();
        h.vmrun(0, a.ctx, 0).unwrap();
        h.translate(0, VA);
        h.vmexit(0).unwrap();
        h.vmrun(0, b, tlb_control).unwrap();
        assert_eq!(h.translate(0, VA), Translated::Ok { pa: if tlb_control == 3 { 0x30_1000 } else { 0x30_0000 }, key: 0 });
        assert_eq!(h.violation_total() > 0, tlb_control == 0, "tlb_control={tlb_control}");
    }
}

#[test]
fn hazard_asid_handed_to_a_new_vm_without_flush_is_isolation() {
    for flush in [false, true] {
        let mut h = host();
        let old = guest(&mut h, Mode::Svm, 9, 0x30_0000, 1, None);
        h.vmrun(0, old.ctx, 0).unwrap();
        h.translate(0, VA);
        h.vmexit(0).unwrap();
        // a new VM gets ASID 9, with its own tables mapping VA to its own memory
        let new = guest(&mut h, Mode::Svm, 9, 0x90_0000, 2, None);
        h.vmrun(0, new.ctx, if flush { 3 } else { 0 }).unwrap();
        let t = h.translate(0, VA);
        let iso = h.cause_counts().into_iter().find(|(c, _)| *c == Cause::ForeignVmTranslation).unwrap().1;
        assert_eq!(iso > 0, !flush);
        assert_eq!(t, Translated::Ok { pa: if flush { 0x90_0000 } else { 0x30_0000 }, key: 0 });
    }
}

#[test]
fn guest_key_follows_the_c_bit_and_foreign_pages_are_isolation() {
    let mut h = host();
    let gt = h.create_table(TableKind::Guest);
    h.map(gt, VA, 0x1000, PageSize::K4, F_CBIT).unwrap();
    h.map(gt, VA2, 0x2000, PageSize::K4, 0).unwrap();
    let nt = h.create_table(TableKind::Nested);
    h.map(nt, 0x1000, 0x30_0000, PageSize::K4, 0).unwrap();
    h.map(nt, 0x2000, 0x40_0000, PageSize::K4, 0).unwrap();
    h.set_owner(0x30_0000, 4096, 7).unwrap();
    h.set_owner(0x40_0000, 4096, 8).unwrap(); // another guest's page
    let c = h.create_context(Context { mode: Mode::Svm, tag: 7, pcid: 0, pcide: true, cr3: gt, nested: nt, key: 7, vm: 1 }).unwrap();
    h.vmrun(0, c, 0).unwrap();
    assert_eq!(h.translate(0, VA), Translated::Ok { pa: 0x30_0000, key: 7 });
    assert_eq!(h.violation_total(), 0);
    assert_eq!(h.translate(0, VA2), Translated::Ok { pa: 0x40_0000, key: 0 });
    let iso = h.cause_counts().into_iter().find(|(c, _)| *c == Cause::ForeignPageAccess).unwrap().1;
    assert_eq!(iso, 1);
    assert_eq!(h.translate(0, 0x1234_5000), Translated::Fault);
    assert_eq!(h.ctr.page_faults[0], 1);
}

#[test]
fn large_pages_splinter_and_guest_physical_entries_spare_walks() {
    let mut h = host();
    let gt = h.create_table(TableKind::Guest);
    h.map(gt, 0x4000_0000, 0x4000_0000, PageSize::G1, 0).unwrap(); // 1 GiB guest leaf
    let nt = h.create_table(TableKind::Nested);
    h.map(nt, 0x4000_0000, 0x20_0000, PageSize::M2, 0).unwrap(); // 2 MiB nested leaf
    let c = h.create_context(Context { mode: Mode::Vmx, tag: 3, pcid: 0, pcide: true, cr3: gt, nested: nt, key: 0, vm: 1 }).unwrap();
    h.vmentry(0, c).unwrap();
    assert_eq!(h.translate(0, 0x4000_1234), Translated::Ok { pa: 0x20_1234, key: 0 });
    // combined entry at the smaller size; the guest-physical one at the nested leaf's
    let es = h.tlb_entries(0).unwrap();
    assert!(es.iter().any(|(_, e, _)| e.cat == CAT_COMBINED && e.size == PageSize::M2 as u8));
    assert!(es.iter().any(|(_, e, _)| e.cat == CAT_GPHYS && e.size == PageSize::M2 as u8));
    // an INVVPID keeps the guest-physical entry: the refill is the cheaper guest-only walk
    h.invvpid(0, 1, 3, 0).unwrap().unwrap();
    let before = h.ctr.gphys_hits[0];
    h.translate(0, 0x4000_1234);
    assert_eq!(h.ctr.gphys_hits[0], before + 1);
    // an INVEPT drops both: the full nested walk again
    h.invept(0, 1, nt).unwrap().unwrap();
    let misses = h.ctr.gphys_misses[0];
    h.translate(0, 0x4000_1234);
    assert_eq!(h.ctr.gphys_misses[0], misses + 1);
}

/// Nested truth: an L2 context judged against NPT12 then NPT01 catches a shadow NPT02 that was not
/// synced after L1's NPT12 edit; a bad chain is refused with the context unchanged; run_guest is
/// vmrun + batch + vmexit.
#[test]
fn nested_truth_catches_a_missed_shadow_sync() {
    let mut h = host();
    let gt = h.create_table(TableKind::Guest);
    h.map(gt, VA, 0x1000, PageSize::K4, 0).unwrap();
    let npt12 = h.create_table(TableKind::Guest);
    h.map(npt12, 0x1000, 0x5000, PageSize::K4, 0).unwrap();
    let npt01 = h.create_table(TableKind::Nested);
    h.map(npt01, 0x5000, 0x30000, PageSize::K4, 0).unwrap();
    h.map(npt01, 0x6000, 0x40000, PageSize::K4, 0).unwrap();
    let npt02 = h.create_table(TableKind::Nested);
    h.map(npt02, 0x1000, 0x30000, PageSize::K4, 0).unwrap();
    let l2 = h.create_context(Context { mode: Mode::Svm, tag: 2, pcid: 0, pcide: true, cr3: gt, nested: npt02, key: 0, vm: 2 }).unwrap();
    for bad in [(npt01, npt01), (npt12, npt12), (gt, npt01), (npt12, npt02), (npt12, 999)] {
        assert!(h.set_nested_truth(l2, Some(bad)).is_err(), "{bad:?}");
        assert_eq!(h.nested_truth(l2).unwrap(), None);
    }
    assert!(h.set_nested_truth(0, Some((npt12, npt01))).is_err());
    h.set_nested_truth(l2, Some((npt12, npt01))).unwrap();
    let (r, by) = h.run_guest(0, l2, 0, &[VA], sevsim_engine::host::Col::One(false)).unwrap();
    assert_eq!((r, by[7]), (VmrunResult::Entered, 0));
    assert!(h.violations().is_empty());
    h.unmap(npt12, 0x1000).unwrap();
    h.map(npt12, 0x1000, 0x6000, PageSize::K4, 0).unwrap();
    // the flush without the sync: the walk goes through the stale shadow
    h.run_guest(0, l2, 3, &[VA], sevsim_engine::host::Col::One(false)).unwrap();
    let v = h.violations();
    assert_eq!(v.len(), 1);
    assert_eq!((v[0].cause, v[0].pa, v[0].true_pa), (Cause::StaleTranslation, 0x30000, 0x40000));
    assert_eq!(h.current_context(0), 0);
}
