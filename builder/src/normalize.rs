//! Makes the image independent of the capture run, so that two builds of the same input
//! give byte-identical files: the thread ID and rseq CPU numbers the kernel wrote are reset
//! (the stub registers both afresh), and any other word that differs between two captures
//! (ld.so's start-up timestamps for LD_DEBUG=statistics, for example) is zeroed. Both
//! captures run on the first CPU the caller may use, because ld.so keeps CPUID results,
//! and CPUID leaf 1 holds the APIC ID of the CPU it ran on.
use crate::error::{other, Result};
use crate::image::{Fixup, Image};

/// `struct rseq` (linux `include/uapi/linux/rseq.h`), for its field offsets: neither libc
/// nor linux-raw-sys defines it.
#[repr(C)]
#[allow(dead_code, reason = "only the field offsets are used")]
struct Rseq {
    cpu_id_start: u32,
    cpu_id: u32,
    rseq_cs: u64,
    flags: u32,
    node_id: u32,
    mm_cid: u32,
}
const RSEQ_CPU_ID_START: u64 = std::mem::offset_of!(Rseq, cpu_id_start) as u64;
/// The field the stub sets at every start (RSEQ_CPU_ID_UNINITIALIZED before the
/// registration).
pub const RSEQ_CPU_ID: u64 = std::mem::offset_of!(Rseq, cpu_id) as u64;
const RSEQ_NODE_ID: u64 = std::mem::offset_of!(Rseq, node_id) as u64;
const RSEQ_MM_CID: u64 = std::mem::offset_of!(Rseq, mm_cid) as u64;
/// The registration length from which the kernel writes `node_id` and `mm_cid`.
const RSEQ_LEN_WITH_MM_CID: u32 = RSEQ_MM_CID as u32 + 4;
/// glibc's initial `cpu_id` value (RSEQ_CPU_ID_UNINITIALIZED).
const RSEQ_CPU_ID_UNINITIALIZED: u32 = u32::MAX;

/// Resets what the kernel wrote for the capture's own thread.
pub fn reset_thread_state(image: &mut Image) {
    let regs = image.regs;
    if regs.tid_cache != 0 {
        image.write_bytes(regs.tid_cache, &0u32.to_le_bytes());
    }
    if regs.rseq_area != 0 {
        let a = regs.rseq_area;
        image.write_bytes(a + RSEQ_CPU_ID_START, &0u32.to_le_bytes());
        image.write_bytes(a + RSEQ_CPU_ID, &RSEQ_CPU_ID_UNINITIALIZED.to_le_bytes());
        if regs.rseq_len >= RSEQ_LEN_WITH_MM_CID {
            image.write_bytes(a + RSEQ_NODE_ID, &0u32.to_le_bytes());
            image.write_bytes(a + RSEQ_MM_CID, &0u32.to_le_bytes());
        }
    }
}

/// Zeroes in `a` every word that differs from `b`; returns their addresses. The second
/// capture ran with one argument more than the first (`argc`): a 4-byte int that holds
/// `argc` in `a` and `argc + 1` in `b` is the capture's argc (ld.so's `_dl_argc`), which
/// becomes an `ARGC_INT` fixup instead.
pub fn zero_differences(
    a: &mut Image,
    a_fixups: &mut Vec<Fixup>,
    b: &Image,
    b_fixups: &[Fixup],
    argc: Option<u64>,
) -> Result<Vec<u64>> {
    let shape = |i: &Image| {
        i.regions
            .iter()
            .map(|r| (r.start, r.end, r.prot))
            .collect::<Vec<_>>()
    };
    if shape(a) != shape(b) || a.resume_pc != b.resume_pc {
        return Err(other!(
            "two captures of the program differ in layout; it cannot be packed reproducibly"
        ));
    }
    // A word that both captures classify alike points at the same part of the initial
    // stack. One classified differently (or in one capture only) held a stack address
    // that is not a part of it: a stale frame address in memory ld.so used while starting
    // (on i386 its early allocations come from the break), which moves with the stack's
    // size. It varies, so it is zeroed like the other varying words (both captures
    // already hold zero there) and gets no fixup.
    let stale: Vec<u64> = a_fixups
        .iter()
        .filter(|f| !b_fixups.contains(f))
        .map(|f| f.addr)
        .collect();
    a_fixups.retain(|f| !stale.contains(&f.addr));
    let argc_ints = match argc.and_then(|n| u32::try_from(n).ok()) {
        Some(argc) => zero_argc_ints(a, b, argc),
        None => Vec::new(),
    };
    let mut diffs = stale;
    diffs.extend(zero_varying_words(a, b, &argc_ints));
    a_fixups.extend(argc_ints.iter().map(|&addr| Fixup {
        addr,
        kind: elfpack_stub::abi::fixup_kind::ARGC_INT,
        arg: 0,
        offset: 0,
        string: None,
    }));
    a_fixups.sort_by_key(|f| f.addr);
    Ok(diffs)
}

/// Zeroes in `a` the 4-byte ints that hold `argc` there and `argc + 1` in `b`; returns
/// their addresses.
fn zero_argc_ints(a: &mut Image, b: &Image, argc: u32) -> Vec<u64> {
    let mut argc_ints = Vec::new();
    for (ra, rb) in a.regions.iter_mut().zip(&b.regions) {
        let (Some(da), Some(db)) = (ra.data.as_mut(), rb.data.as_ref()) else {
            continue;
        };
        if **da == **db {
            continue;
        }
        let mut found = Vec::new();
        for (i, (ia, ib)) in da.chunks_exact(4).zip(db.chunks_exact(4)).enumerate() {
            let (va, vb) = (
                u32::from_le_bytes(ia.try_into().unwrap()),
                u32::from_le_bytes(ib.try_into().unwrap()),
            );
            if va == argc && vb == argc.wrapping_add(1) {
                found.push(i * 4);
            }
        }
        let bytes = da.to_mut();
        for off in found {
            bytes[off..off + 4].fill(0);
            argc_ints.push(ra.start + off as u64);
        }
    }
    argc_ints
}

/// Zeroes in `a` every word that differs from `b` (but for the argc ints at
/// `argc_ints`, already zero in `a`); returns their addresses.
fn zero_varying_words(a: &mut Image, b: &Image, argc_ints: &[u64]) -> Vec<u64> {
    let w = a.arch.word();
    let mut diffs = Vec::new();
    for (ra, rb) in a.regions.iter_mut().zip(&b.regions) {
        let (Some(da), Some(db)) = (ra.data.as_mut(), rb.data.as_ref()) else {
            continue;
        };
        if **da == **db {
            continue;
        }
        for (i, (wa, wb)) in da
            .to_mut()
            .chunks_exact_mut(w)
            .zip(db.chunks_exact(w))
            .enumerate()
        {
            let addr = ra.start + (i * w) as u64;
            // The argc int's word differs only there (now zero in `a`).
            let mut wb = wb.to_vec();
            for &p in argc_ints
                .iter()
                .filter(|&&p| p >= addr && p < addr + w as u64)
            {
                let o = (p - addr) as usize;
                wb[o..o + 4].fill(0);
            }
            if *wa != *wb {
                wa.fill(0);
                diffs.push(addr);
            }
        }
    }
    diffs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::program::Arch;

    fn image(bytes: Vec<u8>) -> Image {
        Image::for_test(Arch::X86_64, 0x1000, bytes)
    }

    #[test]
    fn zeroes_exactly_the_words_that_differ() {
        let mut a = image(
            [1u64, 2, 3, 4]
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .collect(),
        );
        let b = image(
            [1u64, 9, 3, 8]
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .collect(),
        );
        let diffs = zero_differences(&mut a, &mut vec![], &b, &[], None).unwrap();
        assert_eq!(diffs, vec![0x1008, 0x1018]);
        let d = a.regions[0].data.as_deref().unwrap();
        let words: Vec<u64> = d
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(words, vec![1, 0, 3, 0]);
    }

    #[test]
    fn refuses_different_layouts() {
        let mut a = image(vec![0; 16]);
        let b = image(vec![0; 32]);
        assert!(zero_differences(&mut a, &mut vec![], &b, &[], None).is_err());
    }

    #[test]
    fn resets_tid_and_rseq_cpu() {
        let mut a = image(vec![0xaa; 64]);
        a.regs.tid_address = 0x1000;
        a.regs.tid_cache = 0x1000;
        a.regs.rseq_area = 0x1010;
        a.regs.rseq_len = 32;
        reset_thread_state(&mut a);
        let d = a.regions[0].data.as_deref().unwrap();
        assert_eq!(&d[0..4], &[0, 0, 0, 0]);
        assert_eq!(&d[0x10..0x14], &[0, 0, 0, 0]);
        assert_eq!(&d[0x14..0x18], &[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(&d[4..8], &[0xaa; 4]);
    }
}
