//! Step 5: makes every vDSO function the image refers to work on this kernel.
//!
//! The image holds a copy of the capture-time vDSO (so ld.so's link map of it, its symbol
//! table and its unwind tables stay valid), in which the builder replaced each function's
//! first bytes with an indirect jump through a slot. Here each slot gets this kernel's
//! vDSO symbol of the same name, or a plain system call when there is no vDSO (qemu-user)
//! or it lacks the symbol.
use crate::{arch, desc, fail, place::Place, stack::InitialStack};
use elfpack_stub::abi::{vdso_fn, Descriptor, VdsoSlot};
use elfpack_stub::vdso_elf::LiveVdso;
use linux_raw_sys::auxvec as at;

/// Step 5.
pub fn connect(d: &'static Descriptor, st: &InitialStack, place: &Place) {
    let slots: &[VdsoSlot] = desc::table(d, d.vdso_slots);
    if slots.is_empty() {
        return;
    }
    // SAFETY: AT_SYSINFO_EHDR, when present, is the kernel's vDSO.
    let live = st
        .aux(at::AT_SYSINFO_EHDR)
        .and_then(|b| unsafe { LiveVdso::parse(b) });
    for s in slots {
        let target = live
            .as_ref()
            .and_then(|v| vdso_fn::names(s.func).iter().find_map(|n| v.lookup(n)))
            .or_else(|| arch::vdso_fallback(s.func, st))
            .unwrap_or_else(|| {
                fail::fail_with(
                    "cannot provide a vDSO function of the image",
                    &[(
                        "",
                        fail::Value::Name(vdso_fn::names(s.func).first().copied().unwrap_or(b"?")),
                    )],
                    0,
                )
            });
        // SAFETY: slots are native words in writable pages of the descriptor or, where the
        // proxy reaches them rip-relative, of the image next to it (builder
        // `descriptor.rs`), read only by the proxy's jumps.
        unsafe { (place.at(s.slot) as *mut usize).write(target) };
    }
}
