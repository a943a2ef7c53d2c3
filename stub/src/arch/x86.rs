//! i386: the entry point, raw system calls (`int $0x80` or `__kernel_vsyscall`), the thread pointer (a GDT entry
//! and `%gs`), the vDSO fallbacks and the final hand-over. Nothing else in the stub
//! contains assembly.

use core::arch::{asm, naked_asm};
use core::sync::atomic::{AtomicUsize, Ordering};
use linux_raw_sys::general as g;

/// The ELF entry point.
///
/// ABI: the kernel starts an ELF program at `e_entry` with `%esp` pointing at argc (linux
/// `fs/binfmt_elf.c`, `create_elf_tables`; i386 psABI "Process Initialization"). The stack
/// is realigned to 16 bytes before the cdecl call, whose one argument is that address.
#[unsafe(naked)]
#[no_mangle]
#[link_section = ".text._start"]
pub unsafe extern "C" fn _start() -> ! {
    naked_asm!(
        "mov eax, esp",
        "xor ebp, ebp",
        "and esp, -16",
        "sub esp, 12",
        "push eax",
        "call {restore}",
        "ud2",
        restore = sym crate::restore,
    )
}

/// The kernel's system-call entry `__kernel_vsyscall` (AT_SYSINFO), once known; 0 means
/// `int $0x80`.
static VSYSCALL: AtomicUsize = AtomicUsize::new(0);

/// Makes later system calls go through `__kernel_vsyscall` (AT_SYSINFO of this run), as
/// glibc's do: `int $0x80` takes a slow path on some kernels (measured: about 8 µs a call on
/// this machine's 6.18 against 2 µs for x86-64's `syscall`), and the stub may make hundreds
/// (`protect.rs`). Without AT_SYSINFO (qemu-user) it stays `int $0x80`.
pub fn use_vsyscall(st: &crate::stack::InitialStack) {
    if let Some(p) = st
        .aux(linux_raw_sys::auxvec::AT_SYSINFO)
        .filter(|&p| p != 0)
    {
        VSYSCALL.store(p, Ordering::Relaxed);
    }
}

/// A raw system call with up to six arguments; returns the kernel's value (negative errno
/// on failure).
///
/// # Safety
/// The caller upholds the contract of the system call it names.
#[inline(always)]
pub unsafe fn syscall6(nr: u32, a: [usize; 6]) -> isize {
    let ret: isize;
    let entry = VSYSCALL.load(Ordering::Relaxed);
    // SAFETY: the caller upholds the system call's contract. ABI: i386 Linux system calls take the number in eax and arguments in ebx, ecx, edx,
    // esi, edi, ebp, through `int $0x80` (linux `arch/x86/entry/entry_32.S`, comment above
    // `entry_INT80_32`) or a call of `__kernel_vsyscall` with the same registers, which
    // preserves every register but eax (linux `arch/x86/entry/vdso/vdso32/system_call.S`).
    // LLVM reserves ebx, esi and ebp, so they are saved on the stack and loaded from the
    // argument array here; the entry (or 0) waits on the stack while edx is reloaded.
    unsafe {
        asm!(
            "push ebp",
            "push ebx",
            "push esi",
            "push edi",
            "push edx",
            "mov ebx, [ecx]",
            "mov edx, [ecx + 8]",
            "mov esi, [ecx + 12]",
            "mov edi, [ecx + 16]",
            "mov ebp, [ecx + 20]",
            "mov ecx, [ecx + 4]",
            "cmp dword ptr [esp], 0",
            "je 2f",
            "call dword ptr [esp]",
            "jmp 3f",
            "2:",
            "int 0x80",
            "3:",
            "add esp, 4",
            "pop edi",
            "pop esi",
            "pop ebx",
            "pop ebp",
            inlateout("eax") nr as isize => ret,
            inlateout("ecx") a.as_ptr() => _,
            inlateout("edx") entry => _,
        );
    }
    ret
}

/// `struct user_desc` (linux `arch/x86/include/uapi/asm/ldt.h`).
#[repr(C)]
struct UserDesc {
    entry_number: u32,
    base_addr: u32,
    limit: u32,
    flags: u32,
}

/// Installs the TLS segment ld.so set up at capture and loads `%gs` with it.
///
/// The GDT entry number is left to the kernel (-1), as glibc's `TLS_INIT_TP` does
/// (`sysdeps/i386/nptl/tls.h`): the free entries differ between a 64-bit kernel (12-14),
/// a 32-bit one (6-8) and qemu-i386. glibc reads the entry back from `%gs` when it creates
/// threads, so only `%gs` has to agree with the descriptor.
pub fn set_thread_pointer(tls: &elfpack_stub::abi::Tls) -> isize {
    let mut desc = UserDesc {
        entry_number: u32::MAX,
        base_addr: tls.base as u32,
        limit: tls.limit,
        flags: tls.flags,
    };
    // SAFETY: set_thread_area(2) reads and updates `desc` (linux
    // `arch/x86/kernel/tls.c`, `do_set_thread_area`).
    let ret = unsafe {
        syscall6(
            g::__NR_set_thread_area,
            [&mut desc as *mut UserDesc as usize, 0, 0, 0, 0, 0],
        )
    };
    if ret < 0 {
        return ret;
    }
    let selector = (desc.entry_number << 3) | 3;
    // SAFETY: the selector names the GDT entry just installed, with RPL 3 (Intel SDM vol.
    // 3, 3.4.2 "Segment Selectors").
    unsafe { asm!("mov gs, {0:x}", in(reg) selector, options(nostack, preserves_flags)) };
    0
}

/// Continues at `_dl_start_user` as if `_dl_start` had just returned.
///
/// ABI: glibc `sysdeps/i386/dl-machine.h` `RTLD_START`: `_dl_start` returns the user entry
/// in `%eax`, and `_dl_start_user` first drops the 16 bytes `_start` had pushed below argc
/// (`add $0x10, %esp`), then reads argc at `(%esp)`.
///
/// # Safety
/// `pc` must be `_dl_start_user` of a restored image and `sp` an initial process stack.
pub unsafe fn resume(pc: usize, sp: usize, entry: usize) -> ! {
    // SAFETY: see the ABI note above; after the jump this stack frame is abandoned.
    unsafe {
        asm!(
            "lea esp, [edx - 16]",
            "xor ecx, ecx",
            "xor edx, edx",
            "xor ebp, ebp",
            "jmp edi",
            in("edi") pc,
            in("edx") sp,
            in("eax") entry,
            options(noreturn)
        )
    }
}

/// Jumps to the program's own entry point, as ld.so does at the end of `_dl_start_user`.
///
/// ABI: i386 psABI "Process Initialization": `%esp` points at argc and `%edx` holds a
/// function for `atexit`; glibc `sysdeps/i386/start.S` passes it on.
///
/// # Safety
/// `pc` must be the entry point of a restored image and `sp` an initial process stack.
pub unsafe fn resume_at_entry(pc: usize, sp: usize, fini: usize) -> ! {
    // SAFETY: see the ABI note above.
    unsafe {
        asm!(
            "mov esp, ecx",
            "xor ebp, ebp",
            "jmp edi",
            in("edi") pc,
            in("ecx") sp,
            in("edx") fini,
            options(noreturn)
        )
    }
}

macro_rules! vdso_fallback {
    ($name:ident, $nr:path) => {
        /// Fallback for a vDSO function: the same system call.
        ///
        /// ABI: i386 vDSO functions are cdecl (arguments on the stack); the system call
        /// takes them in ebx, ecx; ebx is callee-saved.
        #[unsafe(naked)]
        pub unsafe extern "C" fn $name() {
            naked_asm!(
                "push ebx",
                "mov ebx, [esp + 8]",
                "mov ecx, [esp + 12]",
                "mov eax, {nr}",
                "int 0x80",
                "pop ebx",
                "ret",
                nr = const $nr,
            );
        }
    };
}

vdso_fallback!(fallback_clock_gettime, g::__NR_clock_gettime);
vdso_fallback!(fallback_clock_gettime64, g::__NR_clock_gettime64);
vdso_fallback!(fallback_gettimeofday, g::__NR_gettimeofday);
vdso_fallback!(fallback_time, g::__NR_time);
vdso_fallback!(fallback_clock_getres, g::__NR_clock_getres);
vdso_fallback!(fallback_clock_getres_time64, g::__NR_clock_getres_time64);

/// `__vdso_getcpu(cpu, node, cache)`.
///
/// ABI: cdecl, three stack arguments, passed to getcpu(2) in ebx, ecx, edx (linux
/// `arch/x86/entry/entry_32.S`); ebx is callee-saved.
#[unsafe(naked)]
pub unsafe extern "C" fn fallback_getcpu() {
    naked_asm!(
        "push ebx",
        "mov ebx, [esp + 8]",
        "mov ecx, [esp + 12]",
        "mov edx, [esp + 16]",
        "mov eax, {nr}",
        "int 0x80",
        "pop ebx",
        "ret",
        nr = const g::__NR_getcpu,
    );
}

/// `__kernel_vsyscall`.
///
/// ABI: the caller has loaded the system-call registers already and expects the result in
/// eax (glibc `sysdeps/unix/sysv/linux/i386/sysdep.h`, `ENTER_KERNEL`); `int $0x80` with
/// the same registers is the kernel's own fallback (linux
/// `arch/x86/entry/vdso/vdso32/system_call.S`).
#[unsafe(naked)]
pub unsafe extern "C" fn fallback_vsyscall() {
    naked_asm!("int 0x80", "ret");
}

/// `__kernel_sigreturn`.
///
/// ABI: entered by `ret` from a signal handler with the old-style frame on the stack; the
/// vDSO version pops the signal number first (linux `arch/x86/entry/vdso/vdso32/sigreturn.S`).
#[unsafe(naked)]
pub unsafe extern "C" fn fallback_sigreturn() {
    naked_asm!("pop eax", "mov eax, {nr}", "int 0x80", nr = const g::__NR_sigreturn);
}

/// `__kernel_rt_sigreturn`.
///
/// ABI: as `__kernel_rt_sigreturn` in linux `arch/x86/entry/vdso/vdso32/sigreturn.S`.
#[unsafe(naked)]
pub unsafe extern "C" fn fallback_rt_sigreturn() {
    naked_asm!("mov eax, {nr}", "int 0x80", nr = const g::__NR_rt_sigreturn);
}

/// For functions whose arguments differ from the system call's: ENOSYS.
///
/// ABI: cdecl, result in eax; callers of vDSO functions treat -ENOSYS as "use the system
/// call".
#[unsafe(naked)]
pub unsafe extern "C" fn fallback_enosys() {
    naked_asm!("mov eax, -38", "ret");
}

/// The fallback for a vDSO function, or `None` if there is none.
pub fn vdso_fallback(func: u32, st: &crate::stack::InitialStack) -> Option<usize> {
    use elfpack_stub::abi::vdso_fn::*;
    if func == KERNEL_VSYSCALL {
        // The kernel names its system-call entry in AT_SYSINFO even when the vDSO has no
        // symbol table entry for it.
        if let Some(p) = st
            .aux(linux_raw_sys::auxvec::AT_SYSINFO)
            .filter(|&p| p != 0)
        {
            return Some(p);
        }
    }
    let f: unsafe extern "C" fn() = match func {
        CLOCK_GETTIME => fallback_clock_gettime,
        CLOCK_GETTIME64 => fallback_clock_gettime64,
        GETTIMEOFDAY => fallback_gettimeofday,
        TIME => fallback_time,
        GETCPU => fallback_getcpu,
        CLOCK_GETRES => fallback_clock_getres,
        CLOCK_GETRES_TIME64 => fallback_clock_getres_time64,
        KERNEL_VSYSCALL => fallback_vsyscall,
        SIGRETURN => fallback_sigreturn,
        RT_SIGRETURN => fallback_rt_sigreturn,
        GETRANDOM => fallback_enosys,
        _ => return None,
    };
    Some(f as usize)
}

/// The kernel's signal frame before the XSAVE area, as glibc counts it when it emulates
/// AT_MINSIGSTKSZ: `sizeof(struct sigframe_ia32)`, the FSAVE header, the return address and
/// three arguments (glibc `sysdeps/unix/sysv/linux/x86/dl-minsigstacksize.h`).
pub const SIGFRAME_SIZE: u32 = 736 + 112 + 4 + 3 * 4;

/// `mmap2`, whose offset counts pages: i386's plain `mmap` takes its arguments in memory
/// (linux `arch/x86/entry/syscalls/syscall_32.tbl`, `old_mmap`).
pub const NR_MMAP: u32 = linux_raw_sys::general::__NR_mmap2;

use core::arch::x86::__cpuid_count;
include!("cpuid.rs");
