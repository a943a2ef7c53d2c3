//! The elfpack restore stub.
//!
//! It runs first at every exec of a packed file, with no libc and no ld.so. The kernel has
//! already mapped the captured image from the file (its PT_LOAD segments); the stub turns
//! that into the process ld.so would have handed over at `_dl_start_user`, in the named
//! steps of [`restore`], and jumps there. It allocates nothing and writes only to the
//! image words its descriptor names.
#![no_std]
#![no_main]

mod arch;
mod cpu;
mod desc;
mod fail;
mod fixups;
mod kernel;
mod line;
mod mem;
mod mm;
mod place;
mod protect;
mod secure;
mod stack;
mod sys;
mod thread;
mod trace;
mod vdso;

/// The whole restore, in order. Called by `arch::_start` with the kernel's stack pointer.
///
/// # Safety
/// `sp` is the initial stack pointer the kernel passed to the ELF entry point.
pub unsafe extern "C" fn restore(sp: *mut usize) -> ! {
    let d = desc::get();
    // 0. Refuse a kernel older than the image needs, and a CPU that lacks what the
    //    image's code needs.
    kernel::check(d);
    cpu::check(d);
    // 1. Read this run's argc, argv, envp and auxv.
    // SAFETY: forwarded from the caller.
    let mut st = unsafe { stack::InitialStack::read(sp) };
    arch::use_vsyscall(&st);
    let t0 = trace::start(&st);
    // 2. Move the image to this run's random places (unless packed with --no-aslr or run
    //    with ADDR_NO_RANDOMIZE) and relocate the words that hold its addresses. Every
    //    later step finds a captured address through `place`.
    let place = place::randomise(d, &st);
    // 3. The initial stack for `_dl_start_user`: this run's argv and envp, the auxv
    //    entries that describe the program set to the original program's values.
    stack::describe_program(&mut st, d, &place);
    // 4. The program break (after the program, or the captured heap's end), and this
    //    run's argument and environment ranges published: one prctl_mm_map holds both. In
    //    a secure run (AT_SECURE), drop the variables ld.so drops for setuid programs.
    mm::restore_brk_and_ranges(d, &st, &place);
    secure::scrub_environment(&mut st);
    // 5. Point the image's vDSO functions at this kernel's vDSO, or at system calls.
    vdso::connect(d, &st, &place);
    // 6. Redirect pointers into the capture-time stack; fresh canary and pointer guard;
    //    `__libc_enable_secure` from AT_SECURE.
    fixups::apply(d, &st, &place);
    // 7. Redo the per-thread kernel registrations: thread pointer, tid address, robust
    //    list, rseq.
    thread::register(d, &place);
    // 8. Give every region its captured protection, now that the writes are done.
    protect::seal(d, &place);
    trace::finish(t0, place.relocated);
    // 9. Resume where ld.so hands over to the program (or, for a loader captured at the
    //    program's entry, there).
    // SAFETY: the descriptor's resume point is `_dl_start_user` of this image, and `sp`
    // now holds the stack it expects.
    unsafe {
        if d.resume_kind == elfpack_stub::abi::RESUME_ENTRY {
            arch::resume_at_entry(place.at(d.resume_pc), sp as usize, place.at(d.resume_dx))
        } else {
            arch::resume(place.at(d.resume_pc), sp as usize, place.at(d.user_entry))
        }
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let (file, line) = info
        .location()
        .map_or((&b"?"[..], 0), |l| (l.file().as_bytes(), l.line()));
    fail::fail_with(
        "internal error in the restore stub",
        &[
            ("at", fail::Value::Name(file)),
            ("line", fail::Value::Num(u64::from(line))),
        ],
        0,
    )
}

/// The precompiled `core` refers to the unwinding personality routine even though the stub
/// is built with `panic = "abort"` and never unwinds; this definition satisfies the link.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}
