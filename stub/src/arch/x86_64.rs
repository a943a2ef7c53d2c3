//! x86-64: the entry point, raw system calls, the thread pointer, the vDSO fallbacks and
//! the final hand-over. Nothing else in the stub contains assembly.

use core::arch::{asm, naked_asm};

/// The ELF entry point.
///
/// ABI: the kernel starts an ELF program at `e_entry` with `%rsp` pointing at argc, followed
/// by argv, envp and auxv (linux `fs/binfmt_elf.c`, `create_elf_tables`; x86-64 psABI 3.4.1),
/// and `%rsp` 16-byte aligned. The restore code gets that address as its argument and never
/// returns; `ud2` traps if it ever did.
#[unsafe(naked)]
#[no_mangle]
#[link_section = ".text._start"]
pub unsafe extern "C" fn _start() -> ! {
    naked_asm!(
        "mov rdi, rsp",
        "xor ebp, ebp",
        "call {restore}",
        "ud2",
        restore = sym crate::restore,
    )
}

/// A raw system call with up to six arguments; returns the kernel's value (negative errno
/// on failure).
///
/// # Safety
/// The caller upholds the contract of the system call it names.
#[inline(always)]
pub unsafe fn syscall6(nr: u32, a: [usize; 6]) -> isize {
    let ret: isize;
    // SAFETY: the caller upholds the system call's contract. ABI: x86-64 Linux system calls take the number in rax and arguments in rdi, rsi, rdx,
    // r10, r8, r9; `syscall` clobbers rcx and r11 (linux `arch/x86/entry/entry_64.S`,
    // comment above `entry_SYSCALL_64`).
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") nr as isize => ret,
            in("rdi") a[0], in("rsi") a[1], in("rdx") a[2],
            in("r10") a[3], in("r8") a[4], in("r9") a[5],
            lateout("rcx") _, lateout("r11") _,
            options(nostack)
        );
    }
    ret
}

/// x86-64 system calls are `syscall` already: nothing to choose (see the i386 version).
pub fn use_vsyscall(_st: &crate::stack::InitialStack) {}

/// Installs the thread pointer that ld.so set up at capture.
pub fn set_thread_pointer(tls: &elfpack_stub::abi::Tls) -> isize {
    // SAFETY: arch_prctl(ARCH_SET_FS) only loads the FS base register (linux
    // `arch/x86/kernel/process_64.c`, `do_arch_prctl_64`); the base points at the TCB that
    // ld.so's `TLS_INIT_TP` (glibc `sysdeps/x86_64/nptl/tls.h`) built inside the image.
    unsafe {
        syscall6(
            linux_raw_sys::general::__NR_arch_prctl,
            [
                linux_raw_sys::general::ARCH_SET_FS as usize,
                tls.base as usize,
                0,
                0,
                0,
                0,
            ],
        )
    }
}

/// Continues at `_dl_start_user` as if `_dl_start` had just returned.
///
/// ABI: glibc `sysdeps/x86_64/dl-machine.h` `RTLD_START`: `_dl_start` returns the user
/// entry point in `%rax`, and `_dl_start_user` reads argc at `(%rsp)` with argv and envp
/// above it. No other register carries a value across that point. `%rdx` is cleared so that
/// nothing stale could pass for an `atexit` function.
///
/// # Safety
/// `pc` must be `_dl_start_user` of a restored image and `sp` an initial process stack.
pub unsafe fn resume(pc: usize, sp: usize, entry: usize) -> ! {
    // SAFETY: see the ABI note above; after the jump this stack frame is abandoned.
    unsafe {
        asm!(
            "mov rsp, rsi",
            "xor ebx, ebx",
            "xor ecx, ecx",
            "xor edx, edx",
            "xor esi, esi",
            "xor ebp, ebp",
            "jmp rdi",
            in("rdi") pc,
            in("rsi") sp,
            in("rax") entry,
            options(noreturn)
        )
    }
}

/// Jumps to the program's own entry point, as ld.so does at the end of `_dl_start_user`.
///
/// ABI: x86-64 psABI 3.4.1: `%rsp` points at argc and `%rdx` holds a function for
/// `atexit` (ld.so's `_dl_fini`); glibc `sysdeps/x86_64/start.S` passes it on.
///
/// # Safety
/// `pc` must be the entry point of a restored image and `sp` an initial process stack.
pub unsafe fn resume_at_entry(pc: usize, sp: usize, fini: usize) -> ! {
    // SAFETY: see the ABI note above.
    unsafe {
        asm!(
            "mov rsp, rsi",
            "xor ebp, ebp",
            "jmp rdi",
            in("rdi") pc,
            in("rsi") sp,
            in("rdx") fini,
            options(noreturn)
        )
    }
}

macro_rules! vdso_fallback {
    ($name:ident, $nr:path) => {
        /// Fallback for a vDSO function: the same system call.
        ///
        /// ABI: vDSO functions follow the C calling convention (arguments in rdi, rsi,
        /// rdx), which for these calls matches the system call's own argument registers.
        #[unsafe(naked)]
        pub unsafe extern "C" fn $name() {
            naked_asm!("mov eax, {nr}", "syscall", "ret", nr = const $nr);
        }
    };
}

vdso_fallback!(
    fallback_clock_gettime,
    linux_raw_sys::general::__NR_clock_gettime
);
vdso_fallback!(
    fallback_gettimeofday,
    linux_raw_sys::general::__NR_gettimeofday
);
vdso_fallback!(fallback_time, linux_raw_sys::general::__NR_time);
vdso_fallback!(fallback_getcpu, linux_raw_sys::general::__NR_getcpu);
vdso_fallback!(
    fallback_clock_getres,
    linux_raw_sys::general::__NR_clock_getres
);

/// Fallback for `__vdso_getrandom`, whose arguments are not those of the system call:
/// report ENOSYS, which callers of the vDSO function handle by using the system call.
///
/// ABI: SysV x86-64, result in rax.
#[unsafe(naked)]
pub unsafe extern "C" fn fallback_enosys() {
    naked_asm!("mov rax, -38", "ret");
}

/// The fallback for a vDSO function, or `None` if this architecture has none for it.
pub fn vdso_fallback(func: u32, _st: &crate::stack::InitialStack) -> Option<usize> {
    use elfpack_stub::abi::vdso_fn::*;
    let f: unsafe extern "C" fn() = match func {
        CLOCK_GETTIME => fallback_clock_gettime,
        GETTIMEOFDAY => fallback_gettimeofday,
        TIME => fallback_time,
        GETCPU => fallback_getcpu,
        CLOCK_GETRES => fallback_clock_getres,
        GETRANDOM => fallback_enosys,
        _ => return None,
    };
    Some(f as usize)
}

/// The kernel's signal frame before the XSAVE area, as glibc counts it when it emulates
/// AT_MINSIGSTKSZ: `sizeof(struct rt_sigframe)` and the return address (glibc
/// `sysdeps/unix/sysv/linux/x86/dl-minsigstacksize.h`).
pub const SIGFRAME_SIZE: u32 = 440 + 8;

/// `mmap` with a byte offset (linux `arch/x86/entry/syscalls/syscall_64.tbl`).
pub const NR_MMAP: u32 = linux_raw_sys::general::__NR_mmap;

use core::arch::x86_64::__cpuid_count;
include!("cpuid.rs");
