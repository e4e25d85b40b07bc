//! Oracle findings. The engine records them (never raises): a simulation of a broken policy runs to
//! the end and reports every hazard it met.

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Data in memory is (or will be) wrong: a write-back with a key other than the page owner's,
    /// or a read that returns data written under another key.
    Corruption,
    /// A device access met a dirty cached line it cannot see (confidential lines are not coherent
    /// with DMA even on SME_COHERENT parts, commit d45829b351ee, semantics.md 1.2 and 1.6 case C).
    Dma,
    /// A CPU read data of a previous tenant of its key slot (semantics.md 1.6 case D), or a
    /// translation reached another VM's memory.
    Isolation,
    /// A TLB hit that disagrees with the current page tables.
    StaleTranslation,
    /// An access the SEV-SNP RMP checks reject (the hardware raises #PF/#NPF/#VC).
    RmpFault,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cause {
    /// A dirty line was written back onto a page now owned by another key (1.6 case A/B).
    WritebackForeignOwner,
    /// A dirty line cached under a key slot's previous key was written back (1.6 case D).
    WritebackStaleKey,
    /// A fill from memory returned data last written under another key than the reader's.
    ReadForeignData,
    /// A device wrote a line while a dirty copy under another key sits in a cache: the copy will
    /// overwrite the device's data when it is written back.
    DmaWriteDirtyLine,
    /// A device read a line while a newer dirty copy under another key sits in a cache.
    DmaReadDirtyLine,
    /// A CPU hit a line cached under its key slot's previous key.
    StaleKeyHit,
    /// A TLB hit whose target differs from what the current tables say (or the tables no longer
    /// map the address).
    StaleTranslation,
    /// A TLB hit on an entry filled by another VM's context (a reused ASID/VPID not flushed).
    ForeignVmTranslation,
    /// A guest translation reached a page owned by another guest's key.
    ForeignPageAccess,
    /// RMP: a host write to an assigned page (#PF with the RMP bit).
    RmpHostWriteAssigned,
    /// RMP: a host write through a 2 MiB or 1 GiB mapping into a 2 MiB region holding an assigned
    /// 4 KiB page, checked as a 2 MiB access (semantics.md 5.3, adjust_direct_map()).
    RmpHostWriteLargeMapping,
    /// RMP: a guest private access to a page it owns but has not validated (#VC).
    RmpGuestNotValidated,
    /// RMP: a guest private access to a page not assigned to its ASID (#NPF with the RMP bit).
    RmpGuestNotOwned,
    /// RMP: a guest access through a 2 MiB nested mapping over 4 KiB RMP entries (#NPF, SIZEM).
    RmpGuestSizeMismatch,
}

pub const CAUSES: [Cause; 14] = [
    Cause::WritebackForeignOwner,
    Cause::WritebackStaleKey,
    Cause::ReadForeignData,
    Cause::DmaWriteDirtyLine,
    Cause::DmaReadDirtyLine,
    Cause::StaleKeyHit,
    Cause::StaleTranslation,
    Cause::ForeignVmTranslation,
    Cause::ForeignPageAccess,
    Cause::RmpHostWriteAssigned,
    Cause::RmpHostWriteLargeMapping,
    Cause::RmpGuestNotValidated,
    Cause::RmpGuestNotOwned,
    Cause::RmpGuestSizeMismatch,
];

impl Cause {
    pub fn kind(self) -> Kind {
        match self {
            Cause::WritebackForeignOwner | Cause::WritebackStaleKey | Cause::ReadForeignData => Kind::Corruption,
            Cause::DmaWriteDirtyLine | Cause::DmaReadDirtyLine => Kind::Dma,
            Cause::StaleKeyHit | Cause::ForeignVmTranslation | Cause::ForeignPageAccess => Kind::Isolation,
            Cause::StaleTranslation => Kind::StaleTranslation,
            Cause::RmpHostWriteAssigned
            | Cause::RmpHostWriteLargeMapping
            | Cause::RmpGuestNotValidated
            | Cause::RmpGuestNotOwned
            | Cause::RmpGuestSizeMismatch => Kind::RmpFault,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Cause::WritebackForeignOwner => "writeback_foreign_owner",
            Cause::WritebackStaleKey => "writeback_stale_key",
            Cause::ReadForeignData => "read_foreign_data",
            Cause::DmaWriteDirtyLine => "dma_write_dirty_line",
            Cause::DmaReadDirtyLine => "dma_read_dirty_line",
            Cause::StaleKeyHit => "stale_key_hit",
            Cause::StaleTranslation => "stale_translation",
            Cause::ForeignVmTranslation => "foreign_vm_translation",
            Cause::ForeignPageAccess => "foreign_page_access",
            Cause::RmpHostWriteAssigned => "rmp_host_write_assigned",
            Cause::RmpHostWriteLargeMapping => "rmp_host_write_large_mapping",
            Cause::RmpGuestNotValidated => "rmp_guest_not_validated",
            Cause::RmpGuestNotOwned => "rmp_guest_not_owned",
            Cause::RmpGuestSizeMismatch => "rmp_guest_size_mismatch",
        }
    }
    pub fn index(self) -> usize {
        CAUSES.iter().position(|&c| c == self).unwrap_or(0)
    }
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Corruption => "corruption",
            Kind::Dma => "dma",
            Kind::Isolation => "isolation",
            Kind::StaleTranslation => "stale_translation",
            Kind::RmpFault => "rmp_fault",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Violation {
    pub cause: Cause,
    /// The CPU whose action exposed it; -1 for a device (DMA).
    pub cpu: i32,
    /// Physical address of the line (line aligned).
    pub pa: u64,
    /// Key of the offending line (the cached copy, or the reader's key for a read).
    pub key: u16,
    /// The other key involved: the page owner (write-back), the key the data was written under
    /// (read), the device's key (DMA), or the same key (stale hit).
    pub other_key: u16,
    /// The page's owner at the time.
    pub owner: u16,
    /// The clock of `cpu` when it happened (for a device, the latest CPU clock).
    pub cycle: u64,
    /// Translation findings: the virtual (or guest-physical) address, the translation context,
    /// and the true target per the current tables (u64::MAX: unmapped); `pa` is the stale target.
    pub va: u64,
    pub ctx: u32,
    pub true_pa: u64,
}

impl Violation {
    pub fn kind(&self) -> Kind {
        self.cause.kind()
    }
}
