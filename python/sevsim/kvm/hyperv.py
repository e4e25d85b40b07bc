"""The Hyper-V PV TLB-flush FIFOs of a vCPU (arch/x86/kvm/hyperv.c, hyperv.h; tlb-policies.md 9).

Each vCPU has two FIFOs, one for flushes aimed at its L1 and one for its L2, of
KVM_HV_TLB_FLUSH_FIFO_SIZE = 16 entries. An entry is a page-aligned GVA with the count of
additional pages in its low 12 bits; KVM_HV_TLB_FLUSHALL_ENTRY (-1) means flush everything.
hv_tlb_flush_enqueue() keeps one slot free for that entry: "All entries should fit on the fifo
leaving one free for 'flush all' entry ... full fifo always contains 'flush all' entry", so a
request that does not fit in what is left becomes a single FLUSHALL.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Sequence

from .x86 import Req, kvm_check_request

if TYPE_CHECKING:  # pragma: no cover
    from .x86 import Vcpu

KVM_HV_TLB_FLUSH_FIFO_SIZE = 16  # hyperv.h
KVM_HV_TLB_FLUSHALL_ENTRY = -1   # hyperv.h: (u64)-1
PAGE = 4096
L1, L2 = 0, 1  # HV_L1_TLB_FLUSH_FIFO, HV_L2_TLB_FLUSH_FIFO


class HvTlbFlush:
    """The two FIFOs of one vCPU, with counters of what was executed, overflowed and purged."""

    def __init__(self, size: int = KVM_HV_TLB_FLUSH_FIFO_SIZE):
        if size < 2:
            raise ValueError(f"Hyper-V flush FIFO size must be at least 2 (one slot is kept free), got {size}")
        self.size = size
        self.fifo = (deque(), deque())
        self.stats = {"enqueued": 0, "flushall": 0, "gva_flushes": 0, "purged": 0, "drained": 0}

    def enqueue(self, guest_mode: bool, entries: Sequence[int] | None) -> None:
        """hv_tlb_flush_enqueue(): `entries` (GVA | extra pages) if they fit in what is free less the
        slot kept for FLUSHALL, else one FLUSHALL entry. None: a flush of the whole space."""
        f = self.fifo[L2 if guest_mode else L1]
        avail = self.size - len(f)
        if entries and len(entries) < avail:
            f.extend(int(e) for e in entries)
            self.stats["enqueued"] += len(entries)
        elif avail > 0 and (not f or f[-1] != KVM_HV_TLB_FLUSHALL_ENTRY):
            f.append(KVM_HV_TLB_FLUSHALL_ENTRY)
            self.stats["flushall"] += 1

    def drain(self, vcpu: "Vcpu") -> int:
        """kvm_hv_vcpu_flush_tlb(): execute the current mode's FIFO, a flush_tlb_gva per page; a
        FLUSHALL entry empties the FIFO and returns non-zero (-ENOSPC), asking the caller for a
        full guest flush."""
        f = self.fifo[L2 if vcpu.guest_mode else L1]
        if not vcpu.policy.sites.hit("kvm_hv_vcpu_flush_tlb:drain"):
            return 0
        self.stats["drained"] += 1
        while f:
            e = f.popleft()
            if e == KVM_HV_TLB_FLUSHALL_ENTRY:
                f.clear()
                return 1
            gva = e & ~(PAGE - 1)
            for j in range((e & (PAGE - 1)) + 1):
                vcpu.policy.flush_tlb_gva(vcpu, gva + j * PAGE)
                self.stats["gva_flushes"] += 1
        return 0

    def purge(self, vcpu: "Vcpu", guest_mode: bool | None = None) -> None:
        """kvm_hv_vcpu_purge_flush_tlb(): only if KVM_REQ_HV_TLB_FLUSH is pending (and that clears
        it), drop the queued work of the given mode (the current one upstream; the RFC's patch 12
        passes is_guest_mode) without executing it: the caller's flush covers it."""
        if not kvm_check_request(vcpu, Req.HV_TLB_FLUSH):
            return
        mode = vcpu.guest_mode if guest_mode is None else guest_mode
        f = self.fifo[L2 if mode else L1]
        self.stats["purged"] += len(f)
        f.clear()


def kvm_hv_flush_tlb(targets: Sequence["Vcpu"], gvas: Sequence[int] | None, from_l2: bool = False) -> None:
    """HVCALL_FLUSH_VIRTUAL_ADDRESS_{LIST,SPACE}: enqueue on every target's FIFO of the caller's
    level and raise KVM_REQ_HV_TLB_FLUSH. `gvas` are the hypercall's entries as the guest wrote
    them: a page-aligned GVA with the count of additional pages in its low 12 bits. A LIST of more than 15 entries
    (KVM_HV_TLB_FLUSH_FIFO_SIZE - 1) is not read at all and becomes a FLUSHALL (kvm_hv_flush_tlb)."""
    entries = None if gvas is None or len(gvas) > KVM_HV_TLB_FLUSH_FIFO_SIZE - 1 else [int(g) for g in gvas]
    for v in targets:
        v.hv.enqueue(from_l2, entries)
        v.requests |= Req.HV_TLB_FLUSH


def kvm_hv_nested_transtion_tlb_flush(vcpu: "Vcpu", tdp_enabled: bool = True) -> None:
    """(sic, hyperv.h) On a nested transition, check the other level's FIFO: raise
    KVM_REQ_HV_TLB_FLUSH if the vCPU has Hyper-V and TDP is on ("requests are put by other vCPUs
    asynchronously")."""
    if tdp_enabled and vcpu.hv is not None:
        if vcpu.policy.sites.hit("kvm_hv_nested_transtion_tlb_flush:raise"):
            vcpu.requests |= Req.HV_TLB_FLUSH
