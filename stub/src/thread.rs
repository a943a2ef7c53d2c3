//! Step 7: the per-thread kernel registrations ld.so made before the snapshot point
//! (glibc `sysdeps/nptl/dl-tls_init_tp.c`, `__tls_init_tp`): the thread pointer,
//! `set_tid_address`, `set_robust_list`, `rseq`. A new process has none of them.
use crate::{arch, arch::syscall6, fail, place::Place};
use elfpack_stub::abi::Descriptor;
use linux_raw_sys::general as g;

/// glibc's marker for "rseq registration failed" in `rseq_area.cpu_id`
/// (`sysdeps/unix/sysv/linux/rseq-internal.h`, RSEQ_CPU_ID_REGISTRATION_FAILED).
const RSEQ_CPU_ID_REGISTRATION_FAILED: u32 = (-2i32) as u32;

pub fn register(d: &Descriptor, place: &Place) {
    let tls = elfpack_stub::abi::Tls {
        base: place.at(d.tls.base) as u64,
        ..d.tls
    };
    let ret = arch::set_thread_pointer(&tls);
    if ret < 0 && ret > -4096 {
        fail::fail_with(
            "cannot install the thread pointer",
            &[
                ("base", fail::Value::Addr(tls.base)),
                ("entry", fail::Value::Num(u64::from(d.tls.entry))),
            ],
            ret,
        );
    }
    let r = &d.regs;
    if r.tid_address != 0 {
        // SAFETY: glibc stores the thread ID that set_tid_address returns in `pd->tid`
        // (`__tls_init_tp`), found by the builder; the word is in a writable page of the
        // TCB.
        unsafe {
            let tid = syscall6(
                g::__NR_set_tid_address,
                [place.at(r.tid_address), 0, 0, 0, 0, 0],
            );
            if r.tid_cache != 0 {
                (place.at(r.tid_cache) as *mut i32).write(tid as i32);
            }
        }
    }
    if r.robust_list_head != 0 {
        // SAFETY: the head lies in the TCB; qemu-user may answer ENOSYS, as glibc tolerates.
        unsafe {
            syscall6(
                g::__NR_set_robust_list,
                [
                    place.at(r.robust_list_head),
                    r.robust_list_len as usize,
                    0,
                    0,
                    0,
                    0,
                ],
            )
        };
    }
    if r.rseq_area != 0 {
        // SAFETY: the area is the TCB's `struct rseq`, registered with glibc's signature.
        let ret = unsafe {
            syscall6(
                g::__NR_rseq,
                [
                    place.at(r.rseq_area),
                    r.rseq_len as usize,
                    0,
                    r.rseq_sig as usize,
                    0,
                    0,
                ],
            )
        };
        if ret < 0 {
            // As glibc does when registration fails (kernels before 4.18 have no rseq;
            // `sysdeps/nptl/dl-tls_init_tp.c`, `__tls_init_tp`): `cpu_id` says
            // RSEQ_CPU_ID_REGISTRATION_FAILED and `__rseq_size` 0, so sched_getcpu() and
            // other users ask the kernel instead of reading the area.
            // SAFETY: `cpu_id` is the second u32 of `struct rseq`.
            unsafe {
                ((place.at(r.rseq_area) + 4) as *mut u32).write(RSEQ_CPU_ID_REGISTRATION_FAILED)
            };
            if d.rseq_size != 0 {
                // SAFETY: `rseq_size` is ld.so's `const unsigned int __rseq_size` (glibc
                // `sysdeps/nptl/dl-tls_init_tp.c`, which writes it the same way); it lies in
                // ld.so's RELRO, which the builder maps writable until `protect::seal`
                // (builder `writer.rs`, `written`).
                unsafe { (place.at(d.rseq_size) as *mut u32).write(0) };
            }
        }
    }
}
