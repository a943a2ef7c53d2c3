//! The contract between the elfpack builder and its restore stub.
//!
//! The library target of this crate is `no_std`. It holds the descriptor that the builder
//! writes into every packed file and that the stub reads at run time ([`abi`], plain data):
//! both sides compile this one definition, so they cannot disagree on a layout. It also
//! holds the list of variables a secure run removes, which the builder compares with the
//! captured ld.so ([`secure_env`]), and the parts of the stub's code that are tested on the
//! host: the errno names of its messages ([`errno`]) and the vDSO symbol look-up
//! ([`vdso_elf`]). The binary target (`src/main.rs`) is the stub itself.
#![no_std]

pub mod abi;
pub mod errno;
pub mod secure_env;
pub mod vdso_elf;
