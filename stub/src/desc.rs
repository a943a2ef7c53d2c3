//! Access to the descriptor the builder wrote right after the stub.
use elfpack_stub::abi::{Descriptor, Table, FORMAT_VERSION, MAGIC};

extern "C" {
    /// Defined by `linker/stub.ld` at the first page after the stub's own segments; the
    /// builder places the descriptor there.
    static __elfpack_desc: Descriptor;
}

pub fn get() -> &'static Descriptor {
    // SAFETY: the builder always writes a descriptor at `__elfpack_desc` (builder
    // `writer.rs`), in a segment that is mapped for as long as the process lives.
    let d = unsafe { &*core::ptr::addr_of!(__elfpack_desc) };
    if d.magic != MAGIC {
        crate::fail::fail("packed file is corrupt (no descriptor magic)", 0);
    }
    if d.version != FORMAT_VERSION {
        use crate::fail::Value;
        crate::fail::fail_with(
            "packed file is corrupt (bad descriptor)",
            &[
                ("format", Value::Num(u64::from(d.version))),
                (
                    "this stub reads format",
                    Value::Num(u64::from(FORMAT_VERSION)),
                ),
            ],
            0,
        );
    }
    d
}

/// The entries of one table.
pub fn table<T>(d: &'static Descriptor, t: Table) -> &'static [T] {
    // SAFETY: the builder lays tables out inside the descriptor blob, aligned to 8 bytes,
    // with `count` entries of `T` (builder `writer.rs`, `DescriptorBlob`).
    unsafe {
        let p = (d as *const Descriptor as *const u8).add(t.offset as usize) as *const T;
        core::slice::from_raw_parts(p, t.count as usize)
    }
}

/// The NUL-terminated string at `offset` in the descriptor's string table.
pub fn string(d: &'static Descriptor, offset: u64) -> *const u8 {
    // SAFETY: string offsets written by the builder lie inside the string table.
    unsafe { (d as *const Descriptor as *const u8).add((d.strings.offset + offset) as usize) }
}
