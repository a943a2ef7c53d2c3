//! Finds the words of the image that hold per-run values and says what each must become:
//! pointers into the capture-time initial stack (argv, envp, auxv, their strings,
//! AT_RANDOM, AT_PLATFORM, ...), and the stack-protector canary and pointer guard (which
//! ld.so derived from the known AT_RANDOM pattern the capture installed). Each found word
//! is zeroed in the image, so nothing of the capture run stays in the output; the stub
//! writes this run's value.
use crate::capture::{StackInfo, GETRANDOM_PATTERN, RANDOM_PATTERN};
use crate::error::{other, Result};
use crate::image::{Fixup, Image, Region, PROT_EXEC};
use elfpack_stub::abi::fixup_kind as k;
use nix::libc::{AT_BASE_PLATFORM, AT_EXECFN, AT_PLATFORM, AT_RANDOM};

const PAGE: usize = 4096;

/// Auxv tags whose values point into the initial stack.
const POINTER_AUX: [u64; 4] = [AT_PLATFORM, AT_BASE_PLATFORM, AT_RANDOM, AT_EXECFN];

fn word_of(bytes: &[u8], w: usize) -> u64 {
    let mut b = [0u8; 8];
    b[..w].copy_from_slice(&bytes[..w]);
    u64::from_le_bytes(b)
}

/// What a capture-time stack address refers to.
fn classify(st: &StackInfo, w: u64, v: u64, addr: u64) -> Result<Fixup> {
    let f = |kind, arg, offset| Fixup {
        addr,
        kind,
        arg,
        offset,
        string: None,
    };
    let argc = st.argv.len() as u64;
    let argv0 = st.sp + w;
    let envp0 = argv0 + w * (argc + 1);
    let auxv0 = st.auxv_addr;
    let auxv_end = auxv0 + 2 * w * st.auxv.len() as u64;
    // Pointers into the vectors point at their elements.
    let aligned = |base: u64| (v - base).is_multiple_of(w);
    if v == st.sp {
        return Ok(f(k::STACK_ARGC, 0, 0));
    }
    if (argv0..envp0).contains(&v) && aligned(argv0) {
        return Ok(f(k::ARGV_ARRAY, 0, v - argv0));
    }
    if (envp0..auxv0).contains(&v) && aligned(envp0) {
        return Ok(f(k::ENVP_ARRAY, 0, v - envp0));
    }
    if (auxv0..auxv_end).contains(&v) && aligned(auxv0) {
        return Ok(f(k::AUXV_ARRAY, 0, v - auxv0));
    }
    if let Some(p) = st.aux(25 /* AT_RANDOM */) {
        if (p..p + 16).contains(&v) {
            return Ok(f(k::AUX_POINTER, 25, v - p));
        }
    }
    // Pointers into strings point at their start, at the base name of a path (libc's
    // `program_invocation_short_name`, glibc `misc/init-misc.c` `__init_misc`), or
    // (environment) at the value after '='.
    for (i, (p, s)) in st.argv.iter().enumerate() {
        let base = s
            .iter()
            .rposition(|&c| c == b'/')
            .map_or(0, |i| i as u64 + 1);
        if v == *p {
            return Ok(f(k::ARGV_STRING, i as u32, 0));
        }
        if base != 0 && v == p + base {
            return Ok(f(k::ARGV_BASENAME, i as u32, 0));
        }
    }
    for (p, s) in &st.envp {
        let value_at = s
            .iter()
            .position(|&c| c == b'=')
            .map_or(0, |i| i as u64 + 1);
        // Inside GLIBC_TUNABLES too: ld.so's tunables keep pointers into its value
        // (`glibc.cpu.hwcaps`, glibc `elf/dl-tunables.c`). Elsewhere only the start and
        // the value count, so that ordinary data is not taken for a pointer.
        let tunables = s.starts_with(b"GLIBC_TUNABLES=");
        if v == *p || v == p + value_at || (tunables && v >= *p && v <= p + s.len() as u64) {
            let mut fx = f(k::ENV_STRING, 0, v - p);
            let mut copy = s.clone();
            copy.push(0);
            fx.string = Some(copy);
            return Ok(fx);
        }
    }
    // The other auxv strings (AT_PLATFORM, AT_EXECFN, ...): the entry that points
    // exactly at the word's value (the last such tag in POINTER_AUX).
    let exact = POINTER_AUX
        .iter()
        .filter_map(|&tag| st.aux(tag).map(|p| (tag, p)))
        .filter(|&(_, p)| p == v)
        .max_by_key(|&(_, p)| p);
    if let Some((tag, p)) = exact {
        return Ok(f(k::AUX_POINTER, tag as u32, v - p));
    }
    Err(other!(
        "{addr:#x} holds {v:#x}, inside the capture-time stack but not at anything ld.so keeps"
    ))
}

/// The words ld.so copied from an auxv entry that differs between machines
/// ([`crate::capture::VARIED_AUX`]): those that hold the kernel's value in `a` and the
/// changed value in `b`, a capture that was given other values. The stub sets each to this
/// run's value.
pub fn aux_values(a: &Image, b: &Image, sa: &StackInfo, sb: &StackInfo) -> Vec<Fixup> {
    let w = a.arch.word();
    let pairs: Vec<(u64, u64, u64)> = crate::capture::VARIED_AUX
        .iter()
        .filter_map(|&(tag, _)| Some((tag, sa.aux(tag)?, sb.aux(tag)?)))
        .filter(|&(_, va, vb)| va != vb)
        .collect();
    let mut found = Vec::new();
    for (ra, rb) in a.regions.iter().zip(&b.regions) {
        let (Some(da), Some(db)) = (ra.data.as_deref(), rb.data.as_deref()) else {
            continue;
        };
        if ra.start != rb.start || da == db {
            continue;
        }
        for (i, (wa, wb)) in da.chunks_exact(w).zip(db.chunks_exact(w)).enumerate() {
            let (va, vb) = (word_of(wa, w), word_of(wb, w));
            if va == vb {
                continue;
            }
            if let Some(&(tag, ..)) = pairs.iter().find(|&&(_, x, y)| (x, y) == (va, vb)) {
                found.push(Fixup {
                    addr: ra.start + (i * w) as u64,
                    kind: k::AUX_VALUE,
                    arg: tag as u32,
                    offset: 0,
                    string: None,
                });
            }
        }
    }
    found
}

/// The values ld.so derived from the capture's patterns, which the scan looks for.
struct Secrets {
    canary: u64,
    guard: u64,
    key: u64,
    /// Captured at the program entry, initializers have already stored pointers mangled
    /// with the capture's pointer guard (atexit handlers): it must stay as it is.
    keep_guard: bool,
}

/// Which pages of region `r` ld.so wrote (all of them for anonymous memory): those that
/// differ from the file, which the kernel maps zero-padded past its end. Pages still
/// equal to their file hold nothing ld.so wrote (constant tables, such as
/// .eh_frame_hdr's relative offsets, can look like stack addresses on i386).
fn written_pages(r: &Region, data: &[u8]) -> Vec<bool> {
    let file = r.file.as_ref().and_then(|f| crate::files::map(f).ok());
    data.chunks(PAGE)
        .enumerate()
        .map(|(k, page)| match &file {
            Some(f) => {
                let from = (r.file_offset as usize + k * PAGE).min(f.len());
                let to = (from + page.len()).min(f.len());
                let (head, tail) = page.split_at(to - from);
                head != &f[from..to] || tail.iter().any(|&b| b != 0)
            }
            None => true,
        })
        .collect()
}

/// What the scan found.
#[derive(Default)]
struct Found {
    fixups: Vec<Fixup>,
    /// Stale stack addresses, to be zeroed.
    stale: Vec<u64>,
    notes: Vec<String>,
}

/// Scans the words of region `r` that ld.so wrote.
fn scan(r: &Region, data: &[u8], st: &StackInfo, w: usize, s: &Secrets, out: &mut Found) {
    let written = written_pages(r, data);
    let fixup = |addr, kind| Fixup {
        addr,
        kind,
        arg: 0,
        offset: 0,
        string: None,
    };
    for (i, chunk) in data.chunks_exact(w).enumerate() {
        if !written[i * w / PAGE] {
            continue;
        }
        let v = word_of(chunk, w);
        let addr = r.start + (i * w) as u64;
        if v == s.canary {
            out.fixups.push(fixup(addr, k::CANARY));
        } else if v == s.guard && !s.keep_guard {
            out.fixups.push(fixup(addr, k::POINTER_GUARD));
        } else if v == s.key {
            out.fixups.push(fixup(addr, k::RANDOM_KEY));
        } else if v >= st.lo && v < st.hi {
            match classify(st, w as u64, v, addr) {
                Ok(f) => out.fixups.push(f),
                // At the hand-over the break holds only what ld.so allocated while
                // starting (glibc `elf/dl-minimal-malloc.c`, `_dl_early_allocate`):
                // a stack address there is a stale frame address. It depends on the
                // capture's environment size, so it is zeroed, for reproducible output.
                Err(_) if r.origin == "[heap]" && !s.keep_guard => out.stale.push(addr),
                Err(e) => out.notes.push(e.to_string()),
            }
        }
    }
}

/// Finds every fixup and zeroes its word in the image; returns the fixups, sorted by
/// address, and notes on words that fall inside the capture-time stack's range without pointing
/// at any of its parts (on i386 ordinary data can look like such an address); those are
/// left as they are.
pub fn find(image: &mut Image, st: &StackInfo) -> Result<(Vec<Fixup>, Vec<String>)> {
    let w = image.arch.word();
    let secrets = Secrets {
        canary: word_of(&RANDOM_PATTERN, w) & !0xff,
        guard: word_of(&RANDOM_PATTERN[w..], w),
        // What getrandom(2) returned at capture (see GETRANDOM_PATTERN): a secret such
        // as malloc's tcache_key (glibc 2.42+).
        key: word_of(&GETRANDOM_PATTERN, w),
        keep_guard: image.resume_kind == elfpack_stub::abi::RESUME_ENTRY,
    };
    let mut found = Found::default();
    for r in &image.regions {
        // Code is never written by ld.so here (BIND_NOW binds through the GOT), except that
        // under READ_IMPLIES_EXEC every region looks like code.
        let code = r.prot & PROT_EXEC != 0 && !image.read_implies_exec;
        if code || r.origin == "[vdso proxy]" {
            continue;
        }
        // The file's own bytes: nothing ld.so wrote.
        if let Some(data) = r
            .data
            .as_deref()
            .filter(|_| !r.data.as_ref().is_some_and(|d| d.is_file()))
        {
            scan(r, data, st, w, &secrets, &mut found);
        }
    }
    let Found {
        fixups: mut found,
        stale,
        notes,
    } = found;
    for addr in found.iter().map(|f| f.addr).chain(stale) {
        image.write_word(addr, 0);
    }
    // Copies of `__libc_enable_secure` get this run's AT_SECURE (the capture's is 0).
    found.extend(image.secure_copies.iter().map(|&addr| Fixup {
        addr,
        kind: k::SECURE_FLAG,
        arg: 0,
        offset: 0,
        string: None,
    }));
    found.sort_by_key(|f| f.addr);
    Ok((found, notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A capture-time stack: argc 2, two arguments, one environment string, auxv with
    /// AT_RANDOM and AT_PLATFORM.
    fn stack() -> StackInfo {
        StackInfo {
            lo: 0x7000,
            hi: 0x9000,
            sp: 0x8000,
            argv: vec![(0x8800, b"a/bc".to_vec()), (0x8805, b"def".to_vec())],
            envp: vec![
                (0x8810, b"HOME=/root".to_vec()),
                (0x8830, b"GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX".to_vec()),
            ],
            auxv_addr: 0x8028,
            auxv: vec![(25, 0x8900), (15, 0x8920), (0, 0)],
        }
    }

    #[test]
    fn classifies_what_ld_so_keeps() {
        let st = stack();
        let c = |v| classify(&st, 8, v, 0x100).unwrap();
        assert_eq!((c(0x8000).kind, c(0x8000).offset), (k::STACK_ARGC, 0));
        assert_eq!((c(0x8008).kind, c(0x8008).offset), (k::ARGV_ARRAY, 0));
        assert_eq!((c(0x8010).kind, c(0x8010).offset), (k::ARGV_ARRAY, 8));
        assert_eq!((c(0x8020).kind, c(0x8020).offset), (k::ENVP_ARRAY, 0));
        assert_eq!((c(0x8028).kind, c(0x8028).offset), (k::AUXV_ARRAY, 0));
        assert_eq!((c(0x8805).kind, c(0x8805).arg), (k::ARGV_STRING, 1));
        assert_eq!((c(0x8802).kind, c(0x8802).arg), (k::ARGV_BASENAME, 0));
        let env = c(0x8815);
        assert_eq!((env.kind, env.offset), (k::ENV_STRING, 5));
        assert_eq!(env.string.as_deref(), Some(&b"HOME=/root\0"[..]));
        assert_eq!(
            (c(0x8903).kind, c(0x8903).arg, c(0x8903).offset),
            (k::AUX_POINTER, 25, 3)
        );
        assert_eq!((c(0x8920).kind, c(0x8920).arg), (k::AUX_POINTER, 15));
    }

    #[test]
    fn pointers_into_glibc_tunables_are_fixups() {
        let st = stack();
        // ld.so's glibc.cpu.hwcaps tunable points at "-AVX", inside the value.
        let f = classify(&st, 8, 0x8830 + 32, 0x100).unwrap();
        assert_eq!((f.kind, f.offset), (k::ENV_STRING, 32));
        assert_eq!(
            f.string.as_deref(),
            Some(&b"GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX\0"[..])
        );
    }

    #[test]
    fn leaves_values_that_merely_fall_in_the_range() {
        let st = stack();
        // Misaligned inside an array, inside a string but not at its start, base name or
        // value.
        for v in [0x8009, 0x8801, 0x8812, 0x7100] {
            assert!(classify(&st, 8, v, 0x100).is_err(), "{v:#x}");
        }
    }
}
