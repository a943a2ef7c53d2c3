//! Reading a stopped tracee through /proc: its mappings, memory and break.
use crate::error::{capture_err, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// One line of /proc/PID/maps.
#[derive(Clone, Debug)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub prot: u32,
    pub offset: u64,
    pub path: String,
}

pub fn maps(pid: i32) -> Result<Vec<Mapping>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|e| capture_err!("cannot read /proc/{pid}/maps: {e}"))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = line.splitn(6, ' ');
        let (Some(range), Some(perms), Some(offset)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let (_dev, _inode) = (f.next(), f.next());
        let path = f.next().unwrap_or("").trim().to_string();
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let p = perms.as_bytes();
        let prot = u32::from(p[0] == b'r')
            | (u32::from(p[1] == b'w') << 1)
            | (u32::from(p[2] == b'x') << 2);
        out.push(Mapping {
            start: u64::from_str_radix(a, 16).unwrap_or(0),
            end: u64::from_str_radix(b, 16).unwrap_or(0),
            prot,
            offset: u64::from_str_radix(offset, 16).unwrap_or(0),
            path,
        });
    }
    Ok(out)
}

/// `start_brk` (field 47 of /proc/PID/stat).
pub fn start_brk(pid: i32) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| capture_err!("cannot read /proc/{pid}/stat: {e}"))?;
    // The command name (field 2) may contain spaces; fields after its ')' are plain.
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    rest.split_whitespace()
        .nth(47 - 3)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| capture_err!("cannot parse /proc/{pid}/stat"))
}

/// The tracee's memory, read and written through /proc/PID/mem (which works on read-only
/// pages of a ptrace-stopped tracee: linux `fs/proc/base.c`, `mem_rw` with FOLL_FORCE).
pub struct Memory {
    file: File,
}

impl Memory {
    pub fn open(pid: i32) -> Result<Memory> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/mem"))
            .map_err(|e| capture_err!("cannot open /proc/{pid}/mem: {e}"))?;
        Ok(Memory { file })
    }

    pub fn read(&self, addr: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.file
            .read_exact_at(&mut buf, addr)
            .map_err(|e| capture_err!("cannot read tracee memory at {addr:#x}+{len:#x}: {e}"))?;
        Ok(buf)
    }

    pub fn read_into(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        self.file.read_exact_at(buf, addr).map_err(|e| {
            capture_err!(
                "cannot read tracee memory at {addr:#x}+{:#x}: {e}",
                buf.len()
            )
        })
    }

    pub fn write(&self, addr: u64, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all_at(bytes, addr)
            .map_err(|e| capture_err!("cannot write tracee memory at {addr:#x}: {e}"))
    }

    pub fn write_word(&self, addr: u64, word: usize, value: u64) -> Result<()> {
        self.write(addr, &value.to_le_bytes()[..word])
    }
}

/// Start addresses of the file mappings that have no anonymous (copied-on-write) pages,
/// from /proc/PID/smaps: their contents are exactly the file's.
pub fn unwritten_file_mappings(pid: i32) -> Result<std::collections::HashMap<u64, ()>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .map_err(|e| capture_err!("cannot read /proc/{pid}/smaps: {e}"))?;
    let mut out = std::collections::HashMap::new();
    let mut current: Option<(u64, bool)> = None;
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, _)) = first
            .split_once('-')
            .filter(|(a, _)| u64::from_str_radix(a, 16).is_ok())
        {
            let path = line.split_whitespace().nth(5).unwrap_or("");
            current = Some((u64::from_str_radix(a, 16).unwrap(), path.starts_with('/')));
        } else if let (Some(rest), Some((start, true))) = (line.strip_prefix("Anonymous:"), current)
        {
            if rest.trim().trim_end_matches("kB").trim() == "0" {
                out.insert(start, ());
            }
        }
    }
    Ok(out)
}

/// Reads `len` bytes of anonymous memory at `addr` (page-aligned): the pages that are
/// present or swapped out, as /proc/PID/pagemap says (bits 63 and 62 of each entry; linux
/// `Documentation/admin-guide/mm/pagemap.rst`), are read; the others were never touched
/// and read as zeros.
pub fn read_resident(pid: i32, mem: &Memory, addr: u64, len: usize) -> Result<Vec<u8>> {
    const PAGE: usize = 4096;
    let pages = len.div_ceil(PAGE);
    let pagemap = File::open(format!("/proc/{pid}/pagemap"))
        .map_err(|e| capture_err!("cannot open /proc/{pid}/pagemap: {e}"))?;
    let mut entries = vec![0u8; pages * 8];
    pagemap
        .read_exact_at(&mut entries, addr / PAGE as u64 * 8)
        .map_err(|e| capture_err!("cannot read /proc/{pid}/pagemap: {e}"))?;
    let used = |i: usize| {
        let e = u64::from_le_bytes(entries[i * 8..i * 8 + 8].try_into().unwrap());
        e & (3 << 62) != 0
    };
    let mut buf = vec![0u8; len];
    let mut i = 0;
    while i < pages {
        if !used(i) {
            i += 1;
            continue;
        }
        let first = i;
        while i < pages && used(i) {
            i += 1;
        }
        let (from, to) = (first * PAGE, (i * PAGE).min(len));
        mem.read_into(addr + from as u64, &mut buf[from..to])?;
    }
    Ok(buf)
}
