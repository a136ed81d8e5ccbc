//! Memory in 2 MiB pages: a decode step streams every weight once, and with 4 KiB pages each
//! 4 KiB of the stream is a TLB miss (`docs/performance.md`). One anonymous buffer type for
//! the model copy ([`crate::gguf::GgufFile::copy_into_huge_pages`]), the interleaved rows
//! of the ternary matrices (`crate::model`) and the bandwidth probe ([`crate::ceiling`]);
//! one reading of what the kernel granted, and one of the memory available for a copy.

/// x86-64's (and most Linux targets') transparent-huge-page size: 2 MiB.
pub const HUGE_PAGE: usize = 2 << 20;

/// `len` bytes of anonymous memory starting on a [`HUGE_PAGE`] boundary, advised
/// `MADV_HUGEPAGE` (advice only: without THP the buffer works the same in small pages).
pub struct HugeBuffer {
    map: memmap2::MmapMut,
    start: usize,
    len: usize,
}

impl HugeBuffer {
    /// Maps `len` zeroed bytes (plus one huge page of slack to align the start).
    pub fn new(len: usize) -> std::io::Result<HugeBuffer> {
        let map = memmap2::MmapOptions::new()
            .len(len + HUGE_PAGE)
            .map_anon()?;
        let start = map.as_ptr().align_offset(HUGE_PAGE);
        #[cfg(target_os = "linux")]
        let _ = map.advise_range(memmap2::Advice::HugePage, start, len);
        Ok(HugeBuffer { map, start, len })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map[self.start..self.start + self.len]
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.map[self.start..self.start + self.len]
    }
}

/// `MemAvailable` of `/proc/meminfo` in bytes (`None` off Linux): how much a copy of the
/// model may take.
pub fn mem_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The share of `base..base + len` the kernel maps in huge pages: `AnonHugePages` +
/// `FilePmdMapped` of the mappings of `/proc/self/smaps` that overlap it, over `len` (pages
/// not faulted in yet count as small). `None` when smaps cannot be read (off Linux).
pub fn share(base: usize, len: usize) -> Option<f64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let (mut inside, mut kib) = (false, 0u64);
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if let Some((lo, hi)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            let (lo, hi) = (
                usize::from_str_radix(lo, 16).ok()?,
                usize::from_str_radix(hi, 16).ok()?,
            );
            inside = lo < base + len && base < hi;
        } else if inside && (first == "AnonHugePages:" || first == "FilePmdMapped:") {
            kib += words.next()?.parse::<u64>().ok()?;
        }
    }
    Some((kib as f64 * 1024.0 / len.max(1) as f64).min(1.0))
}
