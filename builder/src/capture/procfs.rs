//! Reading a stopped tracee through /proc: its mappings, memory and break.
use crate::error::{capture_err, Result};
use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileExt;

/// One line of /proc/PID/maps.
#[derive(Clone, Debug)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub prot: u32,
    pub offset: u64,
    /// The file's path as bytes, a pseudo name (`[heap]`, `[vdso]`, ...), or empty.
    pub path: OsString,
}

impl Mapping {
    /// Whether the name is a pseudo name such as `[vdso]`.
    pub fn is_special(&self) -> bool {
        self.path.as_bytes().starts_with(b"[")
    }
    /// Whether the mapping is of a file (its name is an absolute path).
    pub fn is_file(&self) -> bool {
        self.path.as_bytes().starts_with(b"/")
    }
}

/// Parses the text of /proc/PID/maps exactly (linux `fs/proc/task_mmu.c`,
/// `show_map_vma`): five fields separated by single spaces, padding spaces, then the name
/// to the end of the line. The name keeps its own spaces, leading and trailing; the kernel
/// writes a newline in it as `\012` (`seq_file_path` with the escape set "\n"), which is
/// turned back into a newline.
pub fn parse_maps(text: &[u8]) -> Vec<Mapping> {
    let mut out = Vec::new();
    for line in text.split(|&c| c == b'\n') {
        let mut rest = line;
        let mut fields = [&b""[..]; 5];
        let mut ok = true;
        for f in fields.iter_mut() {
            match rest.iter().position(|&c| c == b' ') {
                Some(i) => {
                    *f = &rest[..i];
                    rest = &rest[i + 1..];
                }
                None => {
                    *f = rest;
                    rest = &[];
                    ok &= !f.is_empty();
                }
            }
        }
        if !ok {
            continue;
        }
        let name_at = rest.iter().position(|&c| c != b' ').unwrap_or(rest.len());
        let name = unescape(&rest[name_at..]);
        let hex = |b: &[u8]| {
            std::str::from_utf8(b)
                .ok()
                .and_then(|s| u64::from_str_radix(s, 16).ok())
        };
        let Some((a, b)) = std::str::from_utf8(fields[0])
            .ok()
            .and_then(|r| r.split_once('-'))
        else {
            continue;
        };
        let (Some(start), Some(end), Some(offset)) =
            (hex(a.as_bytes()), hex(b.as_bytes()), hex(fields[2]))
        else {
            continue;
        };
        let p = fields[1];
        if p.len() < 3 {
            continue;
        }
        let prot = u32::from(p[0] == b'r')
            | (u32::from(p[1] == b'w') << 1)
            | (u32::from(p[2] == b'x') << 2);
        out.push(Mapping {
            start,
            end,
            prot,
            offset,
            path: OsString::from_vec(name),
        });
    }
    out
}

/// Undoes the kernel's `\ooo` escape of a newline in a mapped file's name.
fn unescape(name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len());
    let mut i = 0;
    while i < name.len() {
        if name[i..].starts_with(b"\\012") {
            out.push(b'\n');
            i += 4;
        } else {
            out.push(name[i]);
            i += 1;
        }
    }
    out
}

pub fn maps(pid: i32) -> Result<Vec<Mapping>> {
    let text = std::fs::read(format!("/proc/{pid}/maps"))
        .map_err(|e| capture_err!("cannot read /proc/{pid}/maps: {e}"))?;
    Ok(parse_maps(&text))
}

/// `start_brk` (field 47 of /proc/PID/stat).
pub fn start_brk(pid: i32) -> Result<u64> {
    // The command name need not be UTF-8.
    let bytes = std::fs::read(format!("/proc/{pid}/stat"))
        .map_err(|e| capture_err!("cannot read /proc/{pid}/stat: {e}"))?;
    let text = String::from_utf8_lossy(&bytes);
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
pub fn unwritten_file_mappings(pid: i32) -> Result<HashSet<u64>> {
    // File names need not be UTF-8; only the field names and numbers are read here.
    let bytes = std::fs::read(format!("/proc/{pid}/smaps"))
        .map_err(|e| capture_err!("cannot read /proc/{pid}/smaps: {e}"))?;
    let text = String::from_utf8_lossy(&bytes);
    let mut out = HashSet::new();
    let mut current: Option<(u64, bool)> = None;
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some(a) = first
            .split_once('-')
            .and_then(|(a, _)| u64::from_str_radix(a, 16).ok())
        {
            let path = line.split_whitespace().nth(5).unwrap_or("");
            current = Some((a, path.starts_with('/')));
        } else if let (Some(rest), Some((start, true))) = (line.strip_prefix("Anonymous:"), current)
        {
            let kib: u64 = rest
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .map_err(|_| capture_err!("cannot parse /proc/{pid}/smaps: {line:?}"))?;
            if kib == 0 {
                out.insert(start);
            }
        }
    }
    Ok(out)
}

/// Whether the tracee runs with READ_IMPLIES_EXEC (linux
/// `include/uapi/linux/personality.h`): the kernel made every mapping executable, so the
/// protection does not tell code from data.
pub fn read_implies_exec(pid: i32) -> Result<bool> {
    let read_implies_exec = nix::sys::personality::Persona::READ_IMPLIES_EXEC.bits() as u32;
    let text = std::fs::read_to_string(format!("/proc/{pid}/personality"))
        .map_err(|e| capture_err!("cannot read /proc/{pid}/personality: {e}"))?;
    let p = u32::from_str_radix(text.trim(), 16)
        .map_err(|_| capture_err!("cannot parse /proc/{pid}/personality: {text:?}"))?;
    Ok(p & read_implies_exec != 0)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_exactly() {
        let text = b"\
555555554000-555555556000 r--p 00000000 08:01 1234                       /tmp/prog \n\
555555556000-555555557000 r-xp 00002000 08:01 1234                       /tmp/a\\012b/lib x.so\n\
7ffff7fc1000-7ffff7fc5000 r--p 00000000 00:00 0                          [vvar]\n\
7ffff7fc5000-7ffff7fc7000 rw-p 00000000 00:00 0 \n\
7ffff7fc7000-7ffff7fc9000 r--p 00000000 08:01 99                         /tmp/\xff old (deleted)\n";
        let m = parse_maps(text);
        assert_eq!(m.len(), 5);
        assert_eq!(m[0].path, OsString::from("/tmp/prog "));
        assert_eq!(
            (m[0].start, m[0].end, m[0].prot),
            (0x555555554000, 0x555555556000, 1)
        );
        assert_eq!(m[1].path, OsString::from("/tmp/a\nb/lib x.so"));
        assert_eq!((m[1].offset, m[1].prot), (0x2000, 5));
        assert!(m[2].is_special());
        assert!(m[3].path.is_empty());
        assert_eq!(m[4].path.as_bytes(), b"/tmp/\xff old (deleted)");
        assert!(m[4].is_file());
    }

    #[test]
    fn survives_garbage() {
        for t in [
            &b""[..],
            b"\n\n",
            b"x",
            b"1-2 r",
            b"zz-1 r--p 0 0:0 0 /x",
            b"1-2 rw 0 0:0 0",
        ] {
            let _ = parse_maps(t);
        }
    }
}
