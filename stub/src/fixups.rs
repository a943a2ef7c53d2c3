//! Step 6: the words of the image that held capture-time values which differ per run.
//!
//! ld.so stored pointers into its initial stack while starting (`_dl_argv`,
//! `__libc_stack_end`, `__environ`, GLRO(dl_auxv), `_dl_platform`, ...; glibc
//! `elf/dl-sysdep.c` `_dl_sysdep_start`, `elf/rtld.c` `dl_main`) and derived the stack
//! protector canary and pointer guard from the AT_RANDOM bytes (`elf/rtld.c`
//! `security_init`, `sysdeps/generic/dl-osinfo.h`). The builder found every such word and
//! said what it points at; here each gets this run's value.
use crate::{desc, place::Place, stack::InitialStack};
use elfpack_stub::abi::{fixup_kind as k, Descriptor, Fixup};
use linux_raw_sys::auxvec as at;

const WORD: usize = core::mem::size_of::<usize>();
static EMPTY: u8 = 0;

/// The environment string of this run whose name equals that of `capture`
/// ("NAME=value"), if any.
fn find_env(st: &InitialStack, capture: *const u8) -> Option<*const u8> {
    // SAFETY: `capture` is a NUL-terminated string of the descriptor; environment strings
    // are NUL-terminated.
    unsafe {
        let mut name_len = 0;
        while *capture.add(name_len) != b'=' && *capture.add(name_len) != 0 {
            name_len += 1;
        }
        (0..st.envc)
            .map(|i| st.env(i))
            .find(|&e| (0..=name_len).all(|j| *e.add(j) == *capture.add(j)))
    }
}

/// The pointer `offset` bytes into the string at `s`, kept inside the string.
fn into_string(s: *const u8, offset: u64) -> usize {
    let len = InitialStack::strlen(s);
    s as usize + (offset as usize).min(len)
}

/// The address just past the last '/' of the NUL-terminated string at `s` (glibc
/// `misc/init-misc.c` `__init_misc`: `program_invocation_short_name`).
fn basename(s: *const u8) -> usize {
    let len = InitialStack::strlen(s);
    // SAFETY: `s` has `len` bytes before its NUL.
    let bytes = unsafe { core::slice::from_raw_parts(s, len) };
    s as usize + bytes.iter().rposition(|&c| c == b'/').map_or(0, |i| i + 1)
}

/// A fresh secret word with the properties glibc requires of `tcache_key` (glibc
/// `malloc/malloc.c` `tcache_key_initialize`: zero would make `tcache_double_free_verify`
/// loop forever through `__libc_free`).
fn random_key(st: &InitialStack, addr: u64) -> usize {
    let mut buf = [0u8; WORD];
    let mut x = if crate::sys::getrandom(&mut buf) == WORD as isize {
        usize::from_ne_bytes(buf) as u64
    } else {
        // No getrandom (kernels before 3.17): a hash of this run's AT_RANDOM, which stays
        // unpredictable, mixed with the word's address.
        (st.random_word(0) as u64) ^ (st.random_word(1) as u64).rotate_left(29) ^ addr
    };
    let bits = usize::BITS;
    loop {
        let v = x as usize;
        let ones = v.count_ones();
        if v > 0x100_0000
            && v < usize::MAX - 0x100_0000
            && ones >= bits / 4
            && ones <= bits - bits / 4
        {
            return v;
        }
        // splitmix64's step: a bijection, so this finds a fitting word quickly.
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x = z ^ (z >> 31);
    }
}

fn value(d: &'static Descriptor, st: &InitialStack, f: &Fixup) -> usize {
    let off = f.offset as usize;
    match f.kind {
        k::STACK_ARGC => st.sp as usize + off,
        k::ARGV_ARRAY => st.argv as usize + off,
        k::ENVP_ARRAY => st.envp as usize + off,
        k::AUXV_ARRAY => st.auxv as usize + off,
        k::ARGV_STRING => match st.arg(f.arg as usize) {
            Some(s) => into_string(s, f.offset),
            None => &EMPTY as *const u8 as usize,
        },
        k::AUX_VALUE => st
            .aux(f.arg)
            .unwrap_or_else(|| crate::cpu::aux_default(f.arg)),
        k::ARGV_BASENAME => match st.arg(f.arg as usize) {
            Some(s) => basename(s),
            None => &EMPTY as *const u8 as usize,
        },
        k::ENV_STRING => {
            let capture = desc::string(d, u64::from(f.arg));
            into_string(find_env(st, capture).unwrap_or(capture), f.offset)
        }
        k::AUX_POINTER => match st.aux(f.arg) {
            Some(p) if p != 0 => p + off,
            _ => 0,
        },
        // glibc `sysdeps/generic/dl-osinfo.h` `_dl_setup_stack_chk_guard`: the first word of
        // AT_RANDOM with its lowest byte cleared (little-endian).
        k::CANARY => st.random_word(0) & !0xff,
        // `_dl_setup_pointer_guard`: the second word of AT_RANDOM.
        k::POINTER_GUARD => st.random_word(1),
        k::RANDOM_KEY => random_key(st, f.addr),
        _ => crate::fail::fail_with(
            "packed file is corrupt (unknown fixup)",
            &[
                ("kind", crate::fail::Value::Num(u64::from(f.kind))),
                ("at", crate::fail::Value::Addr(f.addr)),
            ],
            0,
        ),
    }
}

/// Step 6.
pub fn apply(d: &'static Descriptor, st: &InitialStack, place: &Place) {
    let secure = st.aux(at::AT_SECURE).unwrap_or(0) != 0;
    for f in desc::table::<Fixup>(d, d.fixups) {
        if f.kind == k::SECURE_FLAG {
            // SAFETY: the builder names the address of an `int __libc_enable_secure` copy
            // (a copy relocation into the program, glibc `elf/enbl-secure.c`), 4-byte
            // aligned in a page the builder mapped writable (sealed afterwards).
            unsafe { (place.at(f.addr) as *mut i32).write(i32::from(secure)) };
            continue;
        }
        if f.kind == k::ARGC_INT {
            // SAFETY: the builder names a 4-byte aligned `int` that held the capture's argc
            // (ld.so's `_dl_argc`, glibc `elf/rtld.c`), in a page mapped writable.
            unsafe { (place.at(f.addr) as *mut i32).write(st.argc as i32) };
            continue;
        }
        let v = value(d, st, f);
        // SAFETY: fixup addresses are word-aligned words of the image that the builder
        // mapped writable (its `Protect` entries seal them afterwards).
        unsafe { (place.at(f.addr) as *mut usize).write(v) };
    }
    if d.enable_secure != 0 {
        // SAFETY: `enable_secure` is the address of ld.so's `int __libc_enable_secure`
        // (glibc `elf/enbl-secure.c`), in a writable page of the image.
        unsafe { (place.at(d.enable_secure) as *mut i32).write(i32::from(secure)) };
    }
}
