//! The contract between the elfpack builder and its restore stub.
//!
//! The library target of this crate is `no_std` and holds only plain data definitions: the
//! descriptor that the builder writes into every packed file and that the stub reads at run
//! time. Both sides compile this one definition, so they cannot disagree on a layout. The
//! binary target (`src/main.rs`) is the stub itself.
#![no_std]

pub mod abi;
pub mod errno;
pub mod secure_env;
pub mod vdso_elf;
