//! What elfpack prints besides errors: the notes and warnings of a build, its one-line
//! summary, or with `-v` what was captured; and writing to stdout.
use crate::error::{other, Result};
use crate::pipeline::Packed;
use crate::warning::Warning;
use crate::{cpu, program};

/// How much `elfpack build` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verbosity {
    /// `-q`: nothing but errors.
    Quiet,
    /// Warnings, and one line for the packed file.
    Normal,
    /// `-v`: warnings, notes, and what was captured.
    Verbose,
}

/// Prints a build's warnings and results on stderr.
pub struct Report {
    verbosity: Verbosity,
}

impl Report {
    pub fn new(verbosity: Verbosity) -> Report {
        Report { verbosity }
    }

    /// What [`crate::pipeline::prepare`] had to say, said before the capture.
    pub fn before_capture(&self, warnings: &[Warning]) {
        if self.verbosity == Verbosity::Quiet {
            return;
        }
        for w in warnings {
            eprintln!("elfpack: note: {w}");
        }
    }

    /// A finished build: its warnings, then the summary line, or with `-v` the notes and
    /// what was captured.
    pub fn packed(&self, p: &Packed) {
        if self.verbosity == Verbosity::Quiet {
            return;
        }
        for w in p.warnings.iter().filter(|w| w.is_warning()) {
            eprintln!("elfpack: warning: {w}");
        }
        if self.verbosity == Verbosity::Normal {
            eprintln!(
                "elfpack: packed {} ({}) into {} ({} bytes)",
                p.program.path.display(),
                p.program.arch.name(),
                p.output.display(),
                p.stats.file_size
            );
            return;
        }
        notes(p);
        image(p);
        totals(p);
    }
}

/// `-v`: the capture's remarks and what the analysis left as it was.
fn notes(p: &Packed) {
    for w in p.warnings.iter().filter(|w| w.is_capture()) {
        eprintln!("elfpack: note: {w}");
    }
    for n in p.left_as_is.iter().take(5) {
        eprintln!("elfpack: note: left as is: {n}");
    }
    if p.left_as_is.len() > 5 {
        eprintln!(
            "elfpack: note: ... and {} more such words",
            p.left_as_is.len() - 5
        );
    }
    if !p.analysed.varying.is_empty() {
        let list: Vec<String> = p
            .analysed
            .varying
            .iter()
            .map(|a| format!("{a:#x}"))
            .collect();
        eprintln!(
            "elfpack: note: zeroed words that differ between captures: {}",
            list.join(" ")
        );
    }
    if !p.analysed.unknown_vdso.is_empty() {
        eprintln!(
            "elfpack: note: vDSO functions left as they are: {}",
            p.analysed.unknown_vdso.join(", ")
        );
    }
}

/// `-v`: the interpreter, the CPU level, and the image: objects, vDSO proxy, fixups,
/// regions.
fn image(p: &Packed) {
    let image = &p.analysed.image;
    eprintln!("elfpack: interpreter {}", p.program.interp.display());
    eprintln!(
        "elfpack: CPU level {} (needs {}); masked at capture: {}",
        p.cpu.name,
        cpu::names(p.cpu.needs),
        p.cpu.hwcaps.as_deref().unwrap_or("nothing")
    );
    for o in &image.objects {
        eprintln!("  object {:#014x} {}", o.base, o.path.display());
    }
    if let Some(v) = &p.analysed.vdso {
        let names: Vec<&str> = v.entries.iter().map(|e| e.name.as_str()).collect();
        eprintln!(
            "  vDSO proxy {:#x}-{:#x}: {}",
            v.start,
            v.end,
            names.join(" ")
        );
    }
    for f in &p.analysed.fixups {
        eprintln!(
            "  fixup {:#014x} kind {} arg {} offset {:#x}",
            f.addr, f.kind, f.arg, f.offset
        );
    }
    for r in &image.regions {
        eprintln!(
            "  {:#014x}-{:#014x} {}{}{} {}",
            r.start,
            r.end,
            if r.prot & 1 != 0 { 'r' } else { '-' },
            if r.prot & 2 != 0 { 'w' } else { '-' },
            if r.prot & 4 != 0 { 'x' } else { '-' },
            r.origin
        );
    }
}

/// `-v`: the sizes and the times.
fn totals(p: &Packed) {
    let (image, stats, t) = (&p.analysed.image, &p.stats, &p.times);
    eprintln!(
        "elfpack: {} regions, {} fixups, {} vDSO entries; {} bytes stored, {} zero-filled, {} segments; stub {} bytes at {:#x}",
        image.regions.len(),
        p.analysed.fixups.len(),
        p.analysed.vdso.as_ref().map_or(0, |v| v.entries.len()),
        stats.stored,
        stats.zero,
        stats.segments,
        stats.stub_size,
        stats.stub_base
    );
    eprintln!(
        "elfpack: capture {:.1} ms (two, at once), symbols {:.1} ms, write {:.1} ms, total {:.1} ms",
        t.capture.as_secs_f64() * 1e3,
        t.symbols.as_secs_f64() * 1e3,
        t.write.as_secs_f64() * 1e3,
        t.total.as_secs_f64() * 1e3
    );
}

/// Writes `bytes` to stdout. A reader that went away (EPIPE) ends elfpack quietly, by
/// SIGPIPE as for other Unix tools; other errors are reported.
pub fn print_stdout(bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            // SAFETY: signal(2) and raise(3) on SIGPIPE: restore its default action (Rust
            // sets it to SIG_IGN at start) and die of it, as `cat` would.
            unsafe {
                nix::libc::signal(nix::libc::SIGPIPE, nix::libc::SIG_DFL);
                nix::libc::raise(nix::libc::SIGPIPE);
            }
            std::process::exit(128 + nix::libc::SIGPIPE)
        }
        Err(e) => Err(other!("standard output: {}", program::io_reason(&e))),
    }
}
