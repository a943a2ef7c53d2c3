//! What `elfpack build` has to say besides errors: typed, so that the report decides what
//! to show at which verbosity, and with the text each one has always had.
use std::fmt;
use std::path::PathBuf;

/// A warning or a note about a build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Warning {
    /// Tunable variables of elfpack's own environment that the capture runs without (only
    /// `--env` sets those). A note, said before the capture.
    TunablesDropped(Vec<String>),
    /// ld.so's `_dl_start` did not return the program's entry point, so the capture was
    /// made there instead.
    NotHandover { returned: u64, entry: u64 },
    /// ld.so's mmap did not take the steering's address hint (a note for `-v`).
    MmapElsewhere { len: u64, got: u64, hint: u64 },
    /// Nothing near the thread pointer holds the thread ID (a note for `-v`).
    NoTidCache { tid: u64, thread_pointer: u64 },
    /// The loader is not glibc 2.36's ld.so, whose list of unsecure variables the stub
    /// removes in a secure run.
    UnknownLoader(PathBuf),
    /// An object's RUNPATH uses `$ORIGIN`, and ld.so keeps it expanded to the capture
    /// directory (crate::origin).
    OriginKept {
        object: PathBuf,
        runpath: String,
        dir: PathBuf,
    },
    /// ld.so's lazy-binding resolver needs a feature above the CPU level (glibc before
    /// 2.33 cannot be asked for its FXSAVE one), so every symbol was bound at capture.
    BoundAtCapture(String),
    /// `--untested-glibc` packed a glibc outside the tested versions.
    UntestedGlibc(String),
    /// A position-independent program whose size left no room to capture it at a second
    /// place stays at its captured address in every run; the rest still moves.
    ProgramStays,
}

impl Warning {
    /// Whether it is said as a warning (unless `-q`) rather than only as a note.
    pub fn is_warning(&self) -> bool {
        matches!(
            self,
            Warning::NotHandover { .. }
                | Warning::UnknownLoader(_)
                | Warning::OriginKept { .. }
                | Warning::BoundAtCapture(_)
                | Warning::UntestedGlibc(_)
                | Warning::ProgramStays
        )
    }

    /// Whether it comes from the capture (said again as a note with `-v`).
    pub fn is_capture(&self) -> bool {
        matches!(
            self,
            Warning::NotHandover { .. }
                | Warning::MmapElsewhere { .. }
                | Warning::NoTidCache { .. }
        )
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::TunablesDropped(names) => write!(
                f,
                "captured without {} from this environment (read once at start-up, they would hold in every run; set them with --env)",
                names.join(", ")
            ),
            Warning::NotHandover { returned, entry } => write!(
                f,
                "ld.so returned {returned:#x} from _dl_start, not the program entry {entry:#x}: \
                 this is not glibc's handover; capturing at the program entry instead \
                 (initializers ran at capture and do not run again)"
            ),
            Warning::MmapElsewhere { len, got, hint } => write!(
                f,
                "mmap placed {len:#x} bytes at {got:#x}, not at {hint:#x}"
            ),
            Warning::NoTidCache {
                tid,
                thread_pointer,
            } => write!(
                f,
                "no copy of the thread ID {tid} near the thread pointer {thread_pointer:#x}: \
                 the packed program's glibc will not know its own thread ID"
            ),
            Warning::UnknownLoader(interp) => write!(
                f,
                "{} is not glibc 2.36's ld.so: if the packed file is made setuid, it removes glibc 2.36's list of unsecure variables, not this loader's",
                interp.display()
            ),
            Warning::OriginKept {
                object,
                runpath,
                dir,
            } => write!(
                f,
                "{}: its RUNPATH {runpath} keeps $ORIGIN = {} (a later dlopen searches there, not next to the packed file)",
                object.display(),
                dir.display()
            ),
            Warning::UntestedGlibc(what) => write!(f, "{what}; packed as asked (--untested-glibc)"),
            Warning::BoundAtCapture(why) => write!(
                f,
                "{why}; every symbol was bound at capture instead (LD_BIND_NOW), so a later dlopen(RTLD_LAZY) binds all its symbols at once"
            ),
            Warning::ProgramStays => write!(
                f,
                "the program is too large to be captured at a second place, so it stays at its captured address in every run (ld.so and the libraries still move)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Warning;

    #[test]
    fn capture_remarks() {
        let w = Warning::NotHandover {
            returned: 1,
            entry: 2,
        };
        assert!(w.is_warning() && w.is_capture());
        assert_eq!(
            w.to_string(),
            "ld.so returned 0x1 from _dl_start, not the program entry 0x2: this is not glibc's handover; capturing at the program entry instead (initializers ran at capture and do not run again)"
        );
        let w = Warning::MmapElsewhere {
            len: 0x1000,
            got: 0x2000,
            hint: 0x3000,
        };
        assert!(!w.is_warning() && w.is_capture());
        assert_eq!(
            w.to_string(),
            "mmap placed 0x1000 bytes at 0x2000, not at 0x3000"
        );
    }

    #[test]
    fn texts() {
        assert_eq!(
            Warning::TunablesDropped(vec!["MALLOC_ARENA_MAX".into(), "GLIBC_TUNABLES".into()])
                .to_string(),
            "captured without MALLOC_ARENA_MAX, GLIBC_TUNABLES from this environment (read once at start-up, they would hold in every run; set them with --env)"
        );
        let w = Warning::UnknownLoader("/lib/ld.so".into());
        assert!(w.is_warning() && !w.is_capture());
        assert_eq!(
            w.to_string(),
            "/lib/ld.so is not glibc 2.36's ld.so: if the packed file is made setuid, it removes glibc 2.36's list of unsecure variables, not this loader's"
        );
    }
}
