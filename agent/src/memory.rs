//! What the idle daemon gives back between tests.
//!
//! After a test or an upload the daemon holds two kinds of memory it will not touch again for
//! minutes: heap freed by the test (glibc keeps it; `malloc_trim` returns it) and the pages of
//! code and constants the test used — the agent's own and its libraries', mapped from their
//! files. Those file pages were most of an idle agent's resident set (measured: 8.3 of 9.5 MiB),
//! though the kernel may drop them at any time and they cost the machine nothing the page cache
//! does not already hold. [`IdleMemory::release`] unmaps them from the process
//! (`MADV_DONTNEED`): they stay in the page cache, and the next test faults back in what it uses.
//!
//! Only mappings for which that gives back the very same bytes are touched: private, not
//! writable, backed by a file, with no page of their own (`Anonymous: 0 kB` — a relocated
//! table that the loader wrote and then made read-only has some, and is left alone), and
//! present when the daemon started ([`IdleMemory::at_start`]): the executable and the libraries
//! it was linked with, which stay mapped, unchanged, for the life of the process. A library
//! loaded later (glibc's name-service modules) might be unloaded or still being relocated, so
//! it is never touched. Data, heap, stacks and anything writable never are.
//!
//! Nothing here is new to the process: the kernel drops these same clean pages by itself
//! whenever memory is short, so a library overwritten in place (rather than replaced, as
//! package managers do) would break it with or without this.

/// One mapping [`IdleMemory`] may give back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileMapping {
    pub start: usize,
    pub end: usize,
}

/// The mappings in `smaps` (the text of `/proc/self/smaps`) that can be given back and read
/// again from their files: `r-xp` or `r--p`, with a path, and `Anonymous: 0 kB`. A mapping
/// whose header or `Anonymous` line does not parse is skipped.
pub fn releasable(smaps: &str) -> Vec<FileMapping> {
    let mut out = Vec::new();
    // The current mapping, while it qualifies so far.
    let mut current: Option<FileMapping> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else {
            continue;
        };
        if let Some((start, end)) = first.split_once('-') {
            // A header: range, perms, offset, device, inode, path.
            let perms = fields.next();
            let path = fields.nth(3);
            let start = usize::from_str_radix(start, 16).ok();
            let end = usize::from_str_radix(end, 16).ok();
            current = match (start, end, perms, path) {
                (Some(start), Some(end), Some("r-xp" | "r--p"), Some(path))
                    if path.starts_with('/') && start < end =>
                {
                    Some(FileMapping { start, end })
                }
                _ => None,
            };
        } else if first == "Anonymous:" {
            if let Some(m) = current.take() {
                if fields.next() == Some("0") {
                    out.push(m);
                }
            }
        }
    }
    out
}

/// The daemon's memory to give back between tests.
#[derive(Clone, Debug, Default)]
pub struct IdleMemory {
    mappings: Vec<FileMapping>,
}

impl IdleMemory {
    /// Notes the mappings that can be given back; call once, early (before any library is
    /// loaded at run time). Without `/proc` there are none.
    pub fn at_start() -> IdleMemory {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
        IdleMemory {
            mappings: releasable(&smaps),
        }
    }

    /// Bytes of the mappings [`IdleMemory::release`] gives back.
    pub fn bytes(&self) -> usize {
        self.mappings.iter().map(|m| m.end - m.start).sum()
    }

    /// Hands heap memory freed after a test or an upload back to the system (glibc otherwise
    /// keeps it) and unmaps the file pages noted at start (see the module's documentation).
    /// Best effort: where `madvise` refuses, nothing happens.
    pub fn release(&self) {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only returns free pages at the top of glibc's heaps to the
        // kernel; it has no preconditions and touches no memory in use.
        unsafe {
            libc::malloc_trim(0);
        }
        #[cfg(target_os = "linux")]
        for m in &self.mappings {
            // SAFETY: each range is a whole mapping present since the process started (the
            // executable or a library it was linked with, never unmapped), private, not
            // writable and without a page of its own, so MADV_DONTNEED only drops page-table
            // entries and the next access reads the same bytes from the file. Code running
            // meanwhile on another thread faults its page back in.
            let r = unsafe {
                libc::madvise(
                    m.start as *mut libc::c_void,
                    m.end - m.start,
                    libc::MADV_DONTNEED,
                )
            };
            if r != 0 {
                tracing::debug!("madvise: {}", std::io::Error::last_os_error());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unwritten_read_only_private_file_mappings_are_chosen() {
        let smaps = "\
55d0c0000000-55d0c0100000 r--p 00000000 fe:00 123 /usr/bin/callwatch-agent
Rss:                 100 kB
Anonymous:             0 kB
VmFlags: rd mr mw me
55d0c0100000-55d0c0600000 r-xp 00100000 fe:00 123 /usr/bin/callwatch-agent
Anonymous:             0 kB
55d0c0600000-55d0c0700000 r--p 00600000 fe:00 123 /usr/bin/callwatch-agent
Anonymous:           196 kB
55d0c0700000-55d0c0710000 rw-p 00700000 fe:00 123 /usr/bin/callwatch-agent
Anonymous:             4 kB
55d0c1000000-55d0c1100000 rw-p 00000000 00:00 0 [heap]
Anonymous:           316 kB
7f0000000000-7f0000200000 r-xp 00028000 fe:00 456 /usr/lib/x86_64-linux-gnu/libc.so.6
Anonymous:             0 kB
7f0000300000-7f0000301000 r-xs 00000000 fe:00 789 /dev/shm/shared-code
Anonymous:             0 kB
7f0000400000-7f0000500000 rwxp 00000000 00:00 0
Anonymous:             0 kB
7f0000600000-7f0000601000 r-xp 00000000 00:00 0 [vdso]
Anonymous:             0 kB
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]
Anonymous:             0 kB
7f0000700000-7f0000701000 r-xp 00000000 00:00 0
Anonymous:             0 kB
7f0000900000-7f0000800000 r-xp 00000000 fe:00 1 /backwards
Anonymous:             0 kB
7f0000a00000-7f0000a01000 r-xp 00000000 fe:00 2 /no-anonymous-line
Rss:                   4 kB
7f0000b00000-7f0000b01000 r--p 00000000 fe:00 3 /unparsable-anonymous
Anonymous:           lots kB
";
        assert_eq!(
            releasable(smaps),
            vec![
                FileMapping {
                    start: 0x55d0_c000_0000,
                    end: 0x55d0_c010_0000
                },
                FileMapping {
                    start: 0x55d0_c010_0000,
                    end: 0x55d0_c060_0000
                },
                FileMapping {
                    start: 0x7f00_0000_0000,
                    end: 0x7f00_0020_0000
                },
            ]
        );
    }

    #[cfg(target_os = "linux")]
    fn status_kib(key: &str) -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("the key in /proc/self/status")
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn released_file_pages_leave_the_resident_set_and_the_code_still_runs() {
        let idle = IdleMemory::at_start();
        // The test binary's own text alone is megabytes.
        assert!(idle.bytes() > 1 << 20, "{} bytes", idle.bytes());
        let text = format!("{:?}", (1..=1000u64).map(|i| i * i).sum::<u64>());
        let file_before = status_kib("RssFile:");
        idle.release();
        let file_after = status_kib("RssFile:");
        assert!(
            file_after < file_before,
            "RssFile {file_before} KiB before, {file_after} KiB after"
        );
        // The code and constants fault back in and compute the same; the heap is untouched.
        let again = format!("{:?}", (1..=1000u64).map(|i| i * i).sum::<u64>());
        assert_eq!(again, "333833500");
        assert_eq!(text, again);
    }
}
