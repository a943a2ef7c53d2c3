//! `elfpack`: packs a dynamically linked Linux ELF program into one self-contained
//! executable.
//!
//! Data flows one way: PROGRAM → [`capture`] (ptrace, /proc) → [`image`] (plain data) →
//! [`fixups`] and [`vdso`] (what the stub must redo per run) → [`writer`] (ELF bytes, with
//! the stub from [`stub_blob`]) → OUTPUT.
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

mod capture;
mod checks;
mod cpu;
mod env;
mod files;
mod fixups;
mod image;
mod interp;
mod layout;
mod linkmap;
mod meta;
mod normalize;
mod output;
mod program;
mod sections;
mod signals;
mod stub_blob;
mod symbols;
mod vdso;
mod writer;

/// At the crate root for [`output`], which defers them around its own writes too.
use signals::DeferSignals;
