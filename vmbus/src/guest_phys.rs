//! Guest-physical page numbers for client buffers, one translator per transport.
//!
//! A blob request names its buffers by 4 KiB Hyper-V guest-physical frame numbers
//! (`reference/vmbus.md` §2.3, §6.2). Where those come from depends on the transport:
//!
//! - [`SimPfns`] (`sim`): the daemon assigns each client region a guest-physical base and
//!   registers the memfd with the emulated host, so the PFNs of region offset `o` are simply
//!   `(base + o) / 4096` onwards — the region is contiguous in that invented address space.
//! - [`PagemapPfns`] (`uio`, real Hyper-V): the host addresses the VM's real guest-physical
//!   memory, so a region must be backed by hugepages, locked (`mlock`) and translated through
//!   `/proc/self/pagemap` (which shows PFNs only to `CAP_SYS_ADMIN`). The translation is done
//!   **once**, when the region is set up, and kept as a table: the hot path never reads
//!   pagemap. [`preflight`] refuses to start, with the fix spelled out, when any of that is
//!   impossible.
//!
//! The daemon holds a `Box<dyn PfnTranslator>` (or `Arc`) per client region and calls
//! [`PfnTranslator::buffer_pfns`] for each buffer of each request.
//!
//! **Known limits** (§4.7): `mlock`ed pages can still be migrated by the kernel (compaction,
//! memory hot-unplug); hugetlb pages are the ones it moves least, which is why they are
//! required. GPA-direct cannot work in SNP/TDX confidential VMs (pages would have to be shared
//! with the host); the Linux blob driver refused to load there (`allowed_in_isolated = false`).

use std::fmt::Debug;
use std::io::{Read, Seek};
use std::path::Path;

use blobring_abi::vmbus::HV_PAGE_SIZE;
use blobring_shm::gpa::PagemapError;
use blobring_shm::{HUGE_PAGE_SIZE, PageKind, Pagemap, Region};

/// A buffer outside the region it was asked of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("buffer [{offset}, +{len}) is outside the {region_len}-byte region")]
pub struct OutOfRegion {
    /// Offset asked for.
    pub offset: u64,
    /// Length asked for.
    pub len: u64,
    /// Bytes of the region.
    pub region_len: u64,
}

/// Translates byte ranges of one client region to Hyper-V guest page numbers.
pub trait PfnTranslator: Send + Sync + Debug {
    /// Bytes of the region.
    fn region_len(&self) -> u64;

    /// Replaces `out` with the 4 KiB guest PFNs of every page overlapping
    /// `[offset, offset + len)` of the region, in order, and returns the offset of the first
    /// byte inside the first page (the `BufferPages::offset` of `crate::blob`).
    fn buffer_pfns(&self, offset: u64, len: u32, out: &mut Vec<u64>) -> Result<u32, OutOfRegion>;
}

fn check_range(offset: u64, len: u32, region_len: u64) -> Result<(), OutOfRegion> {
    let err = OutOfRegion {
        offset,
        len: len.into(),
        region_len,
    };
    match offset.checked_add(len.into()) {
        Some(end) if end <= region_len => Ok(()),
        _ => Err(err),
    }
}

/// The `sim` transport's translation: the region sits at guest-physical `gpa_base` of the
/// emulated host's address space (assigned by the daemon, registered over the bus).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimPfns {
    gpa_base: u64,
    len: u64,
}

impl SimPfns {
    /// A region of `len` bytes registered at `gpa_base` (a multiple of 4096).
    pub fn new(gpa_base: u64, len: u64) -> Self {
        debug_assert!(gpa_base.is_multiple_of(HV_PAGE_SIZE));
        Self { gpa_base, len }
    }
}

impl PfnTranslator for SimPfns {
    fn region_len(&self) -> u64 {
        self.len
    }

    fn buffer_pfns(&self, offset: u64, len: u32, out: &mut Vec<u64>) -> Result<u32, OutOfRegion> {
        check_range(offset, len, self.len)?;
        let gpa = self.gpa_base.checked_add(offset).ok_or(OutOfRegion {
            offset,
            len: len.into(),
            region_len: self.len,
        })?;
        out.clear();
        out.extend(crate::blob::contiguous_pfns(gpa, len));
        Ok((gpa % HV_PAGE_SIZE) as u32)
    }
}

/// Why real guest-physical addresses cannot be had; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum GpaRefusal {
    /// Not enough free 2 MiB hugepages (or the region is not hugetlb-backed).
    #[error(
        "no hugepages: {free} free 2 MiB hugepages but {needed} needed for host-accelerated \
         Blob access; reserve them before starting blobringd: \
         `echo {suggest} > /proc/sys/vm/nr_hugepages` (persist with vm.nr_hugepages={suggest} \
         in /etc/sysctl.d/)"
    )]
    NoHugepages {
        /// Free hugepages.
        free: u64,
        /// Hugepages needed.
        needed: u64,
        /// A pool size that would do (at least 512).
        suggest: u64,
    },
    /// `/proc/self/pagemap` reports PFN 0: the process lacks `CAP_SYS_ADMIN`.
    #[error(
        "pagemap hides PFNs: run blobringd as root or with CAP_SYS_ADMIN \
         (AmbientCapabilities=CAP_SYS_ADMIN in the unit); the host needs guest-physical \
         addresses of client buffers"
    )]
    PfnHidden,
    /// `RLIMIT_MEMLOCK` is below what the client regions need.
    #[error(
        "memlock limit too low: {limit} bytes allowed, {needed} needed to lock client regions \
         in RAM; set LimitMEMLOCK=infinity in the unit (or `ulimit -l unlimited` before \
         starting blobringd)"
    )]
    MemlockTooLow {
        /// The soft limit.
        limit: u64,
        /// Bytes needed.
        needed: u64,
    },
    /// A page of a region is not resident (the region was not pre-faulted).
    #[error(
        "page at virtual address {vaddr:#x} is not resident; create client regions \
         pre-faulted (RegionOptions::prefault) before translating them"
    )]
    NotPresent {
        /// The page.
        vaddr: u64,
    },
    /// Reading pagemap or `/proc` failed.
    #[error("cannot read {what}: {source}; is /proc mounted?")]
    Proc {
        /// What was read.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The virtual range overflows the address space (a bug in the caller).
    #[error("virtual range at {vaddr:#x} of {len} bytes overflows")]
    BadRange {
        /// Start.
        vaddr: u64,
        /// Length.
        len: u64,
    },
    /// The region's address is not aligned to its page size (a bug in the caller).
    #[error("region at {vaddr:#x} is not aligned to its {page}-byte pages")]
    Misaligned {
        /// Start of the region.
        vaddr: u64,
        /// Its page size.
        page: u64,
    },
}

impl GpaRefusal {
    fn from_pagemap(e: PagemapError, what: &str) -> Self {
        match e {
            PagemapError::PfnHidden => Self::PfnHidden,
            PagemapError::NotPresent { vaddr } => Self::NotPresent { vaddr },
            PagemapError::Io(source) => Self::Proc {
                what: what.to_owned(),
                source,
            },
            PagemapError::Overflow { vaddr, len } => Self::BadRange { vaddr, len },
        }
    }
}

/// What the machine offers for GPA-direct from userspace (see [`GpaEnvironment::probe`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpaEnvironment {
    /// `HugePages_Free` of `/proc/meminfo`.
    pub hugepages_free: u64,
    /// `Hugepagesize` of `/proc/meminfo`, bytes.
    pub hugepage_size: u64,
    /// Soft `RLIMIT_MEMLOCK`; `None` = unlimited.
    pub memlock_limit: Option<u64>,
    /// Whether pagemap shows PFNs to this process.
    pub pfns_visible: bool,
}

impl GpaEnvironment {
    /// Reads the machine's state: `<proc_root>/meminfo`, this process's `RLIMIT_MEMLOCK`, and
    /// whether `<proc_root>/self/pagemap` shows the PFN of a page we just touched.
    pub fn probe(proc_root: &Path) -> Result<Self, GpaRefusal> {
        let meminfo_path = proc_root.join("meminfo");
        let meminfo =
            std::fs::read_to_string(&meminfo_path).map_err(|source| GpaRefusal::Proc {
                what: meminfo_path.display().to_string(),
                source,
            })?;
        let (hugepages_free, hugepage_size) = parse_meminfo(&meminfo);
        let lim = rustix::process::getrlimit(rustix::process::Resource::Memlock);
        let pagemap_path = proc_root.join("self/pagemap");
        let file = std::fs::File::open(&pagemap_path).map_err(|source| GpaRefusal::Proc {
            what: pagemap_path.display().to_string(),
            source,
        })?;
        let mut pagemap = Pagemap::new(file, rustix::param::page_size() as u64);
        // A page of our own, touched so that it is resident.
        let probe = vec![1u8; 2 * rustix::param::page_size()];
        let vaddr = std::hint::black_box(probe.as_ptr()) as u64;
        let pfns_visible = pfn_visible(&mut pagemap, vaddr, &pagemap_path)?;
        drop(probe);
        Ok(Self {
            hugepages_free,
            hugepage_size,
            memlock_limit: lim.current,
            pfns_visible,
        })
    }
}

/// Whether `pagemap` shows the PFN of the (resident) page at `vaddr`.
pub fn pfn_visible<R: Read + Seek>(
    pagemap: &mut Pagemap<R>,
    vaddr: u64,
    what: &Path,
) -> Result<bool, GpaRefusal> {
    match pagemap.frames(vaddr, 1) {
        Ok(_) => Ok(true),
        Err(PagemapError::PfnHidden) => Ok(false),
        Err(e) => Err(GpaRefusal::from_pagemap(e, &what.display().to_string())),
    }
}

/// `(HugePages_Free, Hugepagesize in bytes)` from `/proc/meminfo` text (0 when absent).
pub fn parse_meminfo(text: &str) -> (u64, u64) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("HugePages_Free"), field("Hugepagesize") * 1024)
}

/// Refuses to start the `uio` transport unless `bytes` of client regions can be hugepage
/// backed, locked and translated. Checked in the order an operator would fix them.
pub fn preflight(env: &GpaEnvironment, bytes: u64) -> Result<(), GpaRefusal> {
    let needed = bytes.div_ceil(HUGE_PAGE_SIZE);
    if env.hugepage_size != HUGE_PAGE_SIZE || env.hugepages_free < needed {
        return Err(GpaRefusal::NoHugepages {
            free: if env.hugepage_size == HUGE_PAGE_SIZE {
                env.hugepages_free
            } else {
                0
            },
            needed,
            suggest: needed.max(512),
        });
    }
    if let Some(limit) = env.memlock_limit
        && limit < bytes
    {
        return Err(GpaRefusal::MemlockTooLow {
            limit,
            needed: bytes,
        });
    }
    if !env.pfns_visible {
        return Err(GpaRefusal::PfnHidden);
    }
    Ok(())
}

/// The `uio` transport's translation: a table of the region's 4 KiB guest PFNs, read once
/// from pagemap after the region was hugepage-backed, pre-faulted and locked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PagemapPfns {
    pfns: Vec<u64>,
    len: u64,
}

impl PagemapPfns {
    /// Locks `region` and translates it. Refuses a region that is not hugetlb-backed
    /// ([`GpaRefusal::NoHugepages`]), that cannot be locked ([`GpaRefusal::MemlockTooLow`]),
    /// or whose PFNs pagemap hides ([`GpaRefusal::PfnHidden`]).
    pub fn for_region<R: Read + Seek>(
        region: &Region,
        pagemap: &mut Pagemap<R>,
    ) -> Result<Self, GpaRefusal> {
        let len = region.len();
        if region.page_kind() != PageKind::Huge2M {
            return Err(GpaRefusal::NoHugepages {
                free: 0,
                needed: len.div_ceil(HUGE_PAGE_SIZE),
                suggest: len.div_ceil(HUGE_PAGE_SIZE).max(512),
            });
        }
        region.mapping().lock().map_err(|_| {
            let lim = rustix::process::getrlimit(rustix::process::Resource::Memlock);
            GpaRefusal::MemlockTooLow {
                limit: lim.current.unwrap_or(0),
                needed: len,
            }
        })?;
        let (ptr, _) = region.mapping().as_raw_parts();
        Self::from_pagemap(pagemap, ptr as u64, len, HUGE_PAGE_SIZE)
    }

    /// Translates `[vaddr, vaddr + len)`, a region backed by pages of `backing_page` bytes
    /// (aligned to them), through `pagemap`. Every pagemap entry (one per system page) gives
    /// `system page / 4096` consecutive Hyper-V PFNs; a 2 MiB hugepage thus yields 512
    /// consecutive PFNs.
    pub fn from_pagemap<R: Read + Seek>(
        pagemap: &mut Pagemap<R>,
        vaddr: u64,
        len: u64,
        backing_page: u64,
    ) -> Result<Self, GpaRefusal> {
        if !vaddr.is_multiple_of(backing_page) || !len.is_multiple_of(HV_PAGE_SIZE) || len == 0 {
            return Err(GpaRefusal::Misaligned {
                vaddr,
                page: backing_page,
            });
        }
        let sys_page = pagemap.page_size();
        let frames = pagemap
            .frames(vaddr, len)
            .map_err(|e| GpaRefusal::from_pagemap(e, "/proc/self/pagemap"))?;
        let per = (sys_page / HV_PAGE_SIZE).max(1);
        let mut pfns = Vec::with_capacity((len / HV_PAGE_SIZE) as usize);
        for f in frames {
            pfns.extend((0..per).map(|i| f * per + i));
        }
        pfns.truncate((len / HV_PAGE_SIZE) as usize);
        Ok(Self { pfns, len })
    }

    /// Every 4 KiB guest PFN of the region, in order.
    pub fn pfns(&self) -> &[u64] {
        &self.pfns
    }
}

impl PfnTranslator for PagemapPfns {
    fn region_len(&self) -> u64 {
        self.len
    }

    fn buffer_pfns(&self, offset: u64, len: u32, out: &mut Vec<u64>) -> Result<u32, OutOfRegion> {
        check_range(offset, len, self.len)?;
        let first = (offset / HV_PAGE_SIZE) as usize;
        let count = crate::packet::page_count(offset % HV_PAGE_SIZE, len.into()) as usize;
        out.clear();
        out.extend_from_slice(&self.pfns[first..first + count]);
        Ok((offset % HV_PAGE_SIZE) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    const PRESENT: u64 = 1 << 63;
    const HUGE: u64 = HUGE_PAGE_SIZE;

    /// A fake pagemap: `entries[i]` for virtual page `i` (4 KiB pages).
    fn fake(entries: Vec<u64>) -> Pagemap<Cursor<Vec<u8>>> {
        Pagemap::new(
            Cursor::new(entries.iter().flat_map(|e| e.to_le_bytes()).collect()),
            4096,
        )
    }

    #[test]
    fn sim_pfns_are_base_plus_offset() {
        let t = SimPfns::new(1 << 30, 64 << 10);
        let mut v = Vec::new();
        assert_eq!(t.buffer_pfns(4096 + 10, 8192, &mut v).unwrap(), 10);
        let first = (1u64 << 30) / 4096 + 1;
        assert_eq!(v, vec![first, first + 1, first + 2]);
        assert_eq!(t.buffer_pfns(0, 1, &mut v).unwrap(), 0);
        assert_eq!(v, vec![first - 1]);
        assert!(t.buffer_pfns(64 << 10, 1, &mut v).is_err());
        assert!(t.buffer_pfns(u64::MAX, 2, &mut v).is_err());
        assert_eq!(t.region_len(), 64 << 10);
    }

    #[test]
    fn hugepage_yields_512_consecutive_pfns() {
        // Two 2 MiB hugepages at virtual 2 MiB: physical 0x40000.. and 0x80200.. (in 4 KiB
        // frames), as pagemap reports them (one entry per 4 KiB sub-page).
        let mut entries = vec![0u64; 512];
        entries.extend((0..512).map(|i| PRESENT | (0x40000 + i)));
        entries.extend((0..512).map(|i| PRESENT | (0x80200 + i)));
        let mut pm = fake(entries);
        let t = PagemapPfns::from_pagemap(&mut pm, HUGE, 2 * HUGE, HUGE).unwrap();
        assert_eq!(t.pfns().len(), 1024);
        assert!(t.pfns()[..512].windows(2).all(|w| w[1] == w[0] + 1));
        assert_eq!(t.pfns()[0], 0x40000);
        assert_eq!(t.pfns()[511], 0x40000 + 511);
        assert_eq!(t.pfns()[512], 0x80200);
        // A buffer straddling the two hugepages.
        let mut v = Vec::new();
        let off = t.buffer_pfns(HUGE - 4096 + 100, 4096, &mut v).unwrap();
        assert_eq!(off, 100);
        assert_eq!(v, vec![0x40000 + 511, 0x80200]);
        assert!(t.buffer_pfns(2 * HUGE - 10, 11, &mut v).is_err());
    }

    #[test]
    fn pagemap_with_64k_system_pages_expands_each_entry() {
        // arm64 64 KiB pages: one entry covers 16 Hyper-V pages.
        let bytes: Vec<u8> = [PRESENT | 7, PRESENT | 9]
            .iter()
            .flat_map(|e| e.to_le_bytes())
            .collect();
        let mut pm = Pagemap::new(Cursor::new(bytes), 65536);
        let t = PagemapPfns::from_pagemap(&mut pm, 0, 2 * 65536, 65536).unwrap();
        assert_eq!(t.pfns().len(), 32);
        assert_eq!(t.pfns()[0], 7 * 16);
        assert_eq!(t.pfns()[15], 7 * 16 + 15);
        assert_eq!(t.pfns()[16], 9 * 16);
    }

    #[test]
    fn pagemap_not_present_and_hidden_are_refused_with_the_fix() {
        let mut entries = vec![PRESENT | 5; 512];
        entries[3] = 0; // not present
        let mut pm = fake(entries);
        let e = PagemapPfns::from_pagemap(&mut pm, 0, HUGE, HUGE).unwrap_err();
        assert!(
            matches!(e, GpaRefusal::NotPresent { vaddr } if vaddr == 3 * 4096),
            "{e}"
        );
        assert!(e.to_string().contains("pre-faulted"));
        // Unprivileged: present, PFN 0.
        let mut pm = fake(vec![PRESENT; 512]);
        let e = PagemapPfns::from_pagemap(&mut pm, 0, HUGE, HUGE).unwrap_err();
        assert!(matches!(e, GpaRefusal::PfnHidden));
        assert!(
            e.to_string()
                .contains("pagemap hides PFNs: run blobringd as root or with CAP_SYS_ADMIN"),
            "{e}"
        );
        assert!(!pfn_visible(&mut pm, 4096, Path::new("fake")).unwrap());
        let mut pm = fake(vec![PRESENT | 1; 2]);
        assert!(pfn_visible(&mut pm, 4096, Path::new("fake")).unwrap());
        // Short pagemap file: an I/O error naming the file.
        let mut pm = fake(vec![PRESENT | 1; 2]);
        let e = PagemapPfns::from_pagemap(&mut pm, 0, HUGE, HUGE).unwrap_err();
        assert!(matches!(e, GpaRefusal::Proc { .. }), "{e}");
        // Misaligned to the backing page.
        let mut pm = fake(vec![PRESENT | 1; 1024]);
        assert!(matches!(
            PagemapPfns::from_pagemap(&mut pm, 4096, HUGE, HUGE),
            Err(GpaRefusal::Misaligned { .. })
        ));
    }

    fn env() -> GpaEnvironment {
        GpaEnvironment {
            hugepages_free: 600,
            hugepage_size: HUGE,
            memlock_limit: None,
            pfns_visible: true,
        }
    }

    #[test]
    fn preflight_refusals_spell_out_the_fix() {
        preflight(&env(), 1 << 30).unwrap();
        let e = preflight(
            &GpaEnvironment {
                hugepages_free: 0,
                ..env()
            },
            1 << 30,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("no hugepages: 0 free 2 MiB hugepages but 512 needed"),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains("echo 512 > /proc/sys/vm/nr_hugepages"),
            "{e}"
        );
        let e = preflight(
            &GpaEnvironment {
                memlock_limit: Some(8 << 20),
                ..env()
            },
            1 << 30,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("memlock limit too low: 8388608 bytes allowed")
                && e.to_string().contains("LimitMEMLOCK=infinity in the unit"),
            "{e}"
        );
        let e = preflight(
            &GpaEnvironment {
                pfns_visible: false,
                ..env()
            },
            1 << 30,
        )
        .unwrap_err();
        assert!(matches!(e, GpaRefusal::PfnHidden));
        // Wrong default hugepage size (e.g. 1 GiB): counts as none.
        assert!(matches!(
            preflight(
                &GpaEnvironment {
                    hugepage_size: 1 << 30,
                    ..env()
                },
                HUGE
            ),
            Err(GpaRefusal::NoHugepages { free: 0, .. })
        ));
    }

    #[test]
    fn probe_reads_a_fake_proc_and_the_real_one() {
        assert_eq!(
            parse_meminfo("MemTotal: 1 kB\nHugePages_Free:      17\nHugepagesize:    2048 kB\n"),
            (17, HUGE)
        );
        assert_eq!(parse_meminfo(""), (0, 0));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("meminfo"),
            "HugePages_Total: 4\nHugePages_Free: 3\nHugepagesize: 2048 kB\n",
        )
        .unwrap();
        // No self/pagemap in the fake: a clear error naming the file.
        let e = GpaEnvironment::probe(dir.path()).unwrap_err();
        assert!(e.to_string().contains("self/pagemap"), "{e}");
        // The real /proc: whatever it says, it parses.
        let real = GpaEnvironment::probe(Path::new("/proc")).unwrap();
        assert_eq!(real.hugepage_size % 4096, 0);
    }

    #[test]
    fn a_non_hugetlb_region_is_refused() {
        let r = Region::create_with(
            "gpa-small",
            HUGE,
            blobring_shm::RegionOptions {
                pages: blobring_shm::PagePolicy::Small,
                prefault: true,
            },
        )
        .unwrap();
        let mut pm = Pagemap::open_self().unwrap();
        let e = PagemapPfns::for_region(&r, &mut pm).unwrap_err();
        assert!(e.to_string().starts_with("no hugepages"), "{e}");
    }
}
