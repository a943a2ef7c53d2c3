//! Finds the words of the image that hold per-run values and says what each must become:
//! pointers into the capture-time initial stack (argv, envp, auxv, their strings,
//! AT_RANDOM, AT_PLATFORM, ...), and the stack-protector canary and pointer guard (which
//! ld.so derived from the known AT_RANDOM pattern the capture installed). Each found word
//! is zeroed in the image, so nothing of the capture run stays in the output; the stub
//! writes this run's value.
use crate::capture::{StackInfo, RANDOM_PATTERN};
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
    if (st.sp..argv0).contains(&v) {
        return Ok(f(k::STACK_ARGC, 0, v - st.sp));
    }
    if (argv0..envp0).contains(&v) {
        return Ok(f(k::ARGV_ARRAY, 0, v - argv0));
    }
    if (envp0..auxv0).contains(&v) {
        return Ok(f(k::ENVP_ARRAY, 0, v - envp0));
    }
    if (auxv0..auxv_end).contains(&v) {
        return Ok(f(k::AUXV_ARRAY, 0, v - auxv0));
    }
    if let Some(p) = st.aux(25 /* AT_RANDOM */) {
        if (p..p + 16).contains(&v) {
            return Ok(f(k::AUX_POINTER, 25, v - p));
        }
    }
    for (i, &(p, len)) in st.argv.iter().enumerate() {
        if v >= p && v <= p + len as u64 {
            return Ok(f(k::ARGV_STRING, i as u32, v - p));
        }
    }
    for (p, s) in &st.envp {
        if v >= *p && v <= p + s.len() as u64 {
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
        .filter(|&(_, p)| p <= v && v < p + 4096)
        .max_by_key(|&(_, p)| p);
    if let Some((tag, p)) = nearest {
        return Ok(f(k::AUX_POINTER, tag as u32, v - p));
    }
    Err(other!(
        "the image holds a pointer at {addr:#x} into the capture-time stack ({v:#x}) that elfpack cannot redirect"
    ))
}

/// Finds every fixup, records it in `image.fixups` and zeroes the word in the image.
pub fn find(image: &mut Image, st: &StackInfo) -> Result<()> {
    let w = image.arch.word();
    let canary = word_of(&RANDOM_PATTERN, w) & !0xff;
    let guard = word_of(&RANDOM_PATTERN[w..], w);
    let mut found = Vec::new();
    for r in &image.regions {
        if r.prot & PROT_EXEC != 0 || r.origin == "[vdso proxy]" {
            continue;
        }
        let Some(data) = &r.data else { continue };
        for (i, chunk) in data.chunks_exact(w).enumerate() {
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
            } else if v == guard {
                found.push(Fixup {
                    addr,
                    kind: k::POINTER_GUARD,
                    arg: 0,
                    offset: 0,
                    string: None,
                });
            } else if v >= st.lo && v < st.hi {
                found.push(classify(st, w as u64, v, addr)?);
            }
        }
    }
    for f in &found {
        image.write_word(f.addr, 0);
    }
    image.fixups = found;
    Ok(())
}
