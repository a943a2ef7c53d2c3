//! Step 4: the program break, and the mm's argument and environment ranges.
//!
//! `prctl(PR_SET_MM, PR_SET_MM_MAP)` sets all of the mm's layout fields in one call and
//! needs no privilege when it does not change the exe file (linux `kernel/sys.c`,
//! `prctl_set_mm_map`, `validate_prctl_map_addr`). It publishes this run's argument and
//! environment ranges and auxv (the kernel's own strings, which the restored stack keeps
//! using) for `/proc/self/cmdline`, `/proc/self/environ`, `ps` and `/proc/self/auxv`.
//!
//! The break: normally nothing used the heap before the snapshot (libc's `__curbrk` is
//! still NULL; glibc `misc/sbrk.c`), so the program keeps the break the kernel gave this
//! run, randomised as for any program, and malloc starts its heap there; when the image
//! moved (`place.rs`), the break goes after the moved program at a random offset, as the
//! kernel places the original's. When the image holds a heap (captured at the entry
//! point, after initializers ran), the break is put back at its end. Where the prctl fails (qemu-user, kernels without
//! CONFIG_CHECKPOINT_RESTORE), the kernel's break stays.
use crate::{place::Place, stack::InitialStack, sys};
use elfpack_stub::abi::Descriptor;

/// `struct prctl_mm_map` as the 64-bit kernel reads it, for both architectures: the kernel
/// copies exactly `sizeof(struct prctl_mm_map)` = 104 bytes with a 64-bit `auxv` pointer,
/// also from 32-bit callers (linux `include/uapi/linux/prctl.h`, `kernel/sys.c`).
#[repr(C, align(8))]
struct MmMap {
    start_code: u64,
    end_code: u64,
    start_data: u64,
    end_data: u64,
    start_brk: u64,
    brk: u64,
    start_stack: u64,
    arg_start: u64,
    arg_end: u64,
    env_start: u64,
    env_end: u64,
    auxv: u64,
    auxv_size: u32,
    exe_fd: u32,
}
const _: () = assert!(core::mem::size_of::<MmMap>() == 104);

/// Step 4, in one system call. Returns whether the kernel took the map.
pub fn restore_brk_and_ranges(d: &Descriptor, st: &InitialStack, place: &Place) -> bool {
    let (arg_start, arg_end, env_start, env_end) = st.strings_end();
    let (start_brk, brk) = if d.mm.brk != 0 {
        (place.at(d.mm.start_brk) as u64, place.at(d.mm.brk) as u64)
    } else if place.moved() {
        // The image moved: the break starts after the program, at a random page offset,
        // as the kernel starts the original's (linux `fs/binfmt_elf.c`, `load_elf_binary`,
        // `arch_randomize_brk`).
        let at = (place.program_end().next_multiple_of(4096) + place.brk_gap) as u64;
        (at, at)
    } else {
        // SAFETY: brk(0) only reports the current break (linux `mm/mmap.c`, `brk`).
        let now = unsafe { crate::arch::syscall6(linux_raw_sys::general::__NR_brk, [0; 6]) } as u64;
        (now, now)
    };
    let map = MmMap {
        start_code: place.at(d.mm.start_code) as u64,
        end_code: place.at(d.mm.end_code) as u64,
        start_data: place.at(d.mm.start_data) as u64,
        end_data: place.at(d.mm.end_data) as u64,
        start_brk,
        brk,
        start_stack: st.sp as u64,
        arg_start: arg_start as u64,
        arg_end: arg_end as u64,
        env_start: env_start as u64,
        env_end: env_end as u64,
        auxv: st.auxv as u64,
        auxv_size: (st.auxc * 2 * core::mem::size_of::<usize>()) as u32,
        exe_fd: u32::MAX,
    };
    use linux_raw_sys::prctl::{PR_SET_MM, PR_SET_MM_MAP};
    // SAFETY: `map` is a complete prctl_mm_map; exe_fd = -1 leaves the exe file alone.
    let ret = unsafe {
        sys::prctl(
            PR_SET_MM,
            PR_SET_MM_MAP as usize,
            &map as *const MmMap as usize,
            const { core::mem::size_of::<MmMap>() },
            0,
        )
    };
    ret == 0
}
