//! Resident memory and open file descriptors of this process, read from `/proc/self` at
//! scrape time (Linux; elsewhere the gauges are simply not set).

/// Resident set size in bytes: the second field of `/proc/self/statm` is in pages.
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let resident_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
    let page_bytes = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(page_bytes)
        .ok()
        .map(|page_bytes| resident_pages * page_bytes)
}

/// Entries of `/proc/self/fd`, less the one the listing itself holds open.
pub fn open_fds() -> Option<u64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(entries.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_of_this_process_are_plausible() {
        assert!(resident_memory_bytes().unwrap() > 1 << 20);
        let before = open_fds().unwrap();
        let file = std::fs::File::open("/proc/self/statm").unwrap();
        assert_eq!(open_fds().unwrap(), before + 1);
        drop(file);
    }
}
