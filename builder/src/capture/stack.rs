//! The tracee's initial stack (argv, envp, auxv) as the kernel built it, and the auxv
//! entries the capture rewrites there before ld.so reads them.
use super::procfs::{Mapping, Memory};
use crate::error::{capture_err, Result};
use nix::libc;

/// The bytes that replace AT_RANDOM during capture. ld.so derives the stack-protector
/// canary and the pointer guard from them, so the image holds these known values, which
/// the builder finds and the stub replaces with values from each run's own AT_RANDOM.
pub const RANDOM_PATTERN: [u8; 16] = [
    0x9e, 0x37, 0x79, 0xb9, 0x7f, 0x4a, 0x7c, 0x15, 0xf3, 0x9c, 0xc0, 0x60, 0x5c, 0xed, 0xc8, 0x34,
];

/// Auxv entries whose values ld.so copies into its own variables (glibc
/// `sysdeps/unix/sysv/linux/dl-parse_auxv.h`, `_dl_parse_auxv`) and that differ between
/// machines, with how a comparison capture changes each: AT_CLKTCK (GLRO(dl_clktck),
/// `sysconf(_SC_CLK_TCK)`), AT_HWCAP2 (GLRO(dl_hwcap2), `getauxval`), AT_MINSIGSTKSZ
/// (GLRO(dl_minsigstacksize), `sysconf(_SC_MINSIGSTKSZ)` and `_SC_SIGSTKSZ`). The changes
/// touch no bit that ld.so acts on while starting.
pub const VARIED_AUX: &[(u64, u64)] = &[
    (libc::AT_CLKTCK, 0x40),
    (libc::AT_HWCAP2, 1 << 30),
    (libc::AT_MINSIGSTKSZ, 0x400),
];

pub const AT_PHDR: u64 = libc::AT_PHDR;
pub const AT_PHENT: u64 = libc::AT_PHENT;
pub const AT_PHNUM: u64 = libc::AT_PHNUM;
pub const AT_BASE: u64 = libc::AT_BASE;
pub const AT_ENTRY: u64 = libc::AT_ENTRY;
pub const AT_RANDOM: u64 = libc::AT_RANDOM;
pub const AT_SYSINFO_EHDR: u64 = libc::AT_SYSINFO_EHDR;
/// i386's `__kernel_vsyscall` entry (linux `arch/x86/include/uapi/asm/auxvec.h`; the libc
/// crate defines it for 32-bit x86 targets only).
pub const AT_SYSINFO: u64 = 32;

/// The capture-time initial stack, for classifying pointers into it.
#[derive(Clone, Debug, Default)]
pub struct StackInfo {
    pub lo: u64,
    pub hi: u64,
    pub sp: u64,
    pub argv: Vec<(u64, Vec<u8>)>,
    pub envp: Vec<(u64, Vec<u8>)>,
    pub auxv_addr: u64,
    pub auxv: Vec<(u64, u64)>,
}

impl StackInfo {
    pub fn aux(&self, tag: u64) -> Option<u64> {
        self.auxv
            .iter()
            .rev()
            .find(|(t, _)| *t == tag)
            .map(|&(_, v)| v)
    }
}

/// The stack's bytes from the stack pointer up, read as words and strings.
struct Area<'a> {
    bytes: &'a [u8],
    sp: u64,
    word: usize,
}

impl Area<'_> {
    fn at(&self, addr: u64) -> Result<usize> {
        addr.checked_sub(self.sp)
            .map(|o| o as usize)
            .filter(|&o| o < self.bytes.len())
            .ok_or_else(|| capture_err!("initial stack pointer {addr:#x} outside the stack"))
    }
    fn word_at(&self, addr: u64) -> Result<u64> {
        let o = self.at(addr)?;
        let b = self
            .bytes
            .get(o..o + self.word)
            .ok_or_else(|| capture_err!("initial stack truncated"))?;
        let mut v = [0u8; 8];
        v[..self.word].copy_from_slice(b);
        Ok(u64::from_le_bytes(v))
    }
    fn string_at(&self, addr: u64) -> Result<Vec<u8>> {
        let o = self.at(addr)?;
        let n = self.bytes[o..]
            .iter()
            .position(|&c| c == 0)
            .ok_or_else(|| capture_err!("unterminated string on the initial stack"))?;
        Ok(self.bytes[o..o + n].to_vec())
    }
}

pub fn read_stack(mem: &Memory, sp: u64, word: usize, maps: &[Mapping]) -> Result<StackInfo> {
    let stack = maps
        .iter()
        .find(|m| m.start <= sp && sp < m.end)
        .ok_or_else(|| capture_err!("stack pointer {sp:#x} is outside every mapping"))?;
    // Everything from the stack pointer up is the kernel's vector and string area: one read.
    let bytes = mem.read(sp, (stack.end - sp) as usize)?;
    let area = Area {
        bytes: &bytes,
        sp,
        word,
    };
    let w = word as u64;
    let mut info = StackInfo {
        lo: stack.start,
        hi: stack.end,
        sp,
        ..Default::default()
    };
    let argc = area.word_at(sp)?;
    for i in 0..argc {
        let p = area.word_at(sp + w * (1 + i))?;
        info.argv.push((p, area.string_at(p)?));
    }
    let mut a = sp + w * (argc + 2);
    loop {
        let p = area.word_at(a)?;
        a += w;
        if p == 0 {
            break;
        }
        info.envp.push((p, area.string_at(p)?));
    }
    info.auxv_addr = a;
    loop {
        let tag = area.word_at(a)?;
        let val = area.word_at(a + w)?;
        info.auxv.push((tag, val));
        a += 2 * w;
        if tag == 0 {
            break;
        }
    }
    Ok(info)
}

/// Rewrites every auxv entry with `tag` on the tracee's stack.
pub fn set_aux(
    mem: &Memory,
    info: &mut StackInfo,
    word: usize,
    tag: u64,
    value: u64,
) -> Result<()> {
    for (i, e) in info.auxv.iter_mut().enumerate() {
        if e.0 == tag {
            e.1 = value;
            mem.write_word(
                info.auxv_addr + (2 * i * word) as u64 + word as u64,
                word,
                value,
            )?;
        }
    }
    Ok(())
}

/// No per-capture randomness in the image: the AT_RANDOM bytes become [`RANDOM_PATTERN`];
/// the comparison capture (`comparison`) also gets other values of [`VARIED_AUX`].
pub fn fix_random_and_vary(
    mem: &Memory,
    stack: &mut StackInfo,
    word: usize,
    comparison: bool,
) -> Result<()> {
    let random = stack
        .aux(AT_RANDOM)
        .ok_or_else(|| capture_err!("no AT_RANDOM"))?;
    mem.write(random, &RANDOM_PATTERN)?;
    if comparison {
        for &(tag, change) in VARIED_AUX {
            if let Some(v) = stack.aux(tag) {
                set_aux(mem, stack, word, tag, v ^ change)?;
            }
        }
    }
    Ok(())
}
