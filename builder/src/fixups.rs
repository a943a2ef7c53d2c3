//! Finds the words of the image that hold per-run values and says what each must become:
//! pointers into the capture-time initial stack (argv, envp, auxv, their strings,
//! AT_RANDOM, AT_PLATFORM, ...), and the stack-protector canary and pointer guard (which
//! ld.so derived from the known AT_RANDOM pattern the capture installed). Each found word
//! is zeroed in the image, so nothing of the capture run stays in the output; the stub
//! writes this run's value.
use crate::capture::{StackInfo, GETRANDOM_PATTERN, RANDOM_PATTERN};
use crate::error::{other, Result};
use crate::image::{Fixup, Image, PROT_EXEC};
use elfpack_stub::abi::fixup_kind as k;

/// Auxv tags whose values point into the initial stack.
const POINTER_AUX: [u64; 4] = [
    15, /* AT_PLATFORM */
    24, /* AT_BASE_PLATFORM */
    25, /* AT_RANDOM */
    31, /* AT_EXECFN */
];

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
        if v == *p || v == p + value_at {
            let mut fx = f(k::ENV_STRING, 0, v - p);
            let mut copy = s.clone();
            copy.push(0);
            fx.string = Some(copy);
            return Ok(fx);
        }
    }
    // The other auxv strings (AT_PLATFORM, AT_EXECFN, ...): the nearest one at or below.
    let nearest = POINTER_AUX
        .iter()
        .filter_map(|&tag| st.aux(tag).map(|p| (tag, p)))
        .filter(|&(_, p)| p == v)
        .max_by_key(|&(_, p)| p);
    if let Some((tag, p)) = nearest {
        return Ok(f(k::AUX_POINTER, tag as u32, v - p));
    }
    Err(other!(
        "{addr:#x} holds {v:#x}, inside the capture-time stack but not at anything ld.so keeps"
    ))
}

/// Finds every fixup, records it in `image.fixups` and zeroes the word in the image.
/// Returns notes on words that fall inside the capture-time stack's range without pointing
/// at any of its parts (on i386 ordinary data can look like such an address); those are
/// left as they are.
pub fn find(image: &mut Image, st: &StackInfo) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    let w = image.arch.word();
    let canary = word_of(&RANDOM_PATTERN, w) & !0xff;
    let guard = word_of(&RANDOM_PATTERN[w..], w);
    // What getrandom(2) returned at capture (see GETRANDOM_PATTERN): a secret such as
    // malloc's tcache_key (glibc 2.42+).
    let key = word_of(&GETRANDOM_PATTERN, w);
    // Captured at the program entry, initializers have already stored pointers mangled
    // with the capture's pointer guard (atexit handlers): it must stay as it is.
    let keep_guard = image.resume_kind == elfpack_stub::abi::RESUME_ENTRY;
    let mut found = Vec::new();
    for r in &image.regions {
        if r.prot & PROT_EXEC != 0 || r.origin == "[vdso proxy]" {
            continue;
        }
        // The file's own bytes: nothing ld.so wrote.
        let Some(data) = r
            .data
            .as_deref()
            .filter(|_| !r.data.as_ref().is_some_and(|d| d.is_file()))
        else {
            continue;
        };
        // Pages still equal to their file hold nothing ld.so wrote (constant tables, such
        // as .eh_frame_hdr's relative offsets, can look like stack addresses on i386).
        let file = if r.origin.starts_with('/') {
            crate::files::map(&r.origin).ok()
        } else {
            None
        };
        // Which pages ld.so wrote (all of them for anonymous memory): those that differ
        // from the file, which the kernel maps zero-padded past its end.
        let written: Vec<bool> = data
            .chunks(4096)
            .enumerate()
            .map(|(k, page)| match &file {
                Some(f) => {
                    let from = (r.file_offset as usize + k * 4096).min(f.len());
                    let to = (from + page.len()).min(f.len());
                    let (head, tail) = page.split_at(to - from);
                    head != &f[from..to] || tail.iter().any(|&b| b != 0)
                }
                None => true,
            })
            .collect();
        for (i, chunk) in data.chunks_exact(w).enumerate() {
            if !written[i * w / 4096] {
                continue;
            }
            let v = word_of(chunk, w);
            let addr = r.start + (i * w) as u64;
            if v == canary {
                found.push(Fixup {
                    addr,
                    kind: k::CANARY,
                    arg: 0,
                    offset: 0,
                    string: None,
                });
            } else if v == guard && !keep_guard {
                found.push(Fixup {
                    addr,
                    kind: k::POINTER_GUARD,
                    arg: 0,
                    offset: 0,
                    string: None,
                });
            } else if v == key {
                found.push(Fixup {
                    addr,
                    kind: k::RANDOM_KEY,
                    arg: 0,
                    offset: 0,
                    string: None,
                });
            } else if v >= st.lo && v < st.hi {
                match classify(st, w as u64, v, addr) {
                    Ok(f) => found.push(f),
                    Err(e) => notes.push(e.to_string()),
                }
            }
        }
    }
    for f in &found {
        image.write_word(f.addr, 0);
    }
    image.fixups = found;
    Ok(notes)
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
            envp: vec![(0x8810, b"HOME=/root".to_vec())],
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
    fn leaves_values_that_merely_fall_in_the_range() {
        let st = stack();
        // Misaligned inside an array, inside a string but not at its start, base name or
        // value.
        for v in [0x8009, 0x8801, 0x8812, 0x7100] {
            assert!(classify(&st, 8, v, 0x100).is_err(), "{v:#x}");
        }
    }
}
