//! `elfpack`: packs a dynamically linked Linux ELF program into one self-contained
//! executable.
//!
//! Data flows one way (ARCHITECTURE.md draws it): PROGRAM → `program` (checked input) →
//! `capture` (ptrace, /proc: a `Snapshot`) → `analysis` (fixups, normalisation, vDSO
//! entries: `Analysed`) → `layout` (segments, protections, stub placement) →
//! `descriptor` (the stub's tables) → `writer` (ELF emission, with the stub from
//! `stub_blob`) → OUTPUT. `arch` holds everything that differs between i386 and x86-64.
//!
//! The edges: [`cli`] turns the command line into [`pipeline::Options`], [`pipeline`] runs
//! the stages and returns what it did as [`pipeline::Packed`], and [`report`] prints that
//! (`-v`, `-q`). The `elfpack` binary (`src/main.rs`) only connects them.
pub mod cli;
pub mod error;
pub mod inspect;
pub mod pipeline;
pub mod report;
pub mod warning;

mod analysis;
mod arch;
mod capture;
mod checks;
mod cpu;
mod cpu_check;
mod descriptor;
mod env;
mod files;
mod fixups;
mod image;
mod interp;
mod layout;
mod linkmap;
mod meta;
mod normalize;
mod origin;
mod output;
mod program;
mod relocs;
mod sections;
mod signals;
mod stub_blob;
mod symbols;
mod vdso;
mod writer;

/// The architectures elfpack packs.
pub use program::Arch;

/// At the crate root for [`output`], which defers them around its own writes too.
use signals::DeferSignals;
