//! Writing OUTPUT so that nothing is left behind, whatever ends elfpack: the file is
//! created unnamed (`O_TMPFILE`), written, and given its name only when complete
//! (`linkat` of `/proc/self/fd/N`, then `rename` over an existing OUTPUT). A SIGKILL at
//! any point before the link leaves no file: the kernel frees an unnamed inode with its
//! last descriptor. Where the file system has no `O_TMPFILE`, a named temporary file is
//! used and removed on every error.
use crate::error::{other, unpackable, Result};
use crate::program::io_reason;
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// OUTPUT while it is written.
pub enum Pending {
    /// Unnamed, from `open(dir, O_TMPFILE)`.
    Unnamed { file: File, dir: PathBuf },
    /// A named temporary file (file systems without `O_TMPFILE`).
    Named(tempfile::NamedTempFile),
}

/// An unnamed file in `dir`, or `None` where the file system cannot make one.
fn unnamed(dir: &Path) -> std::io::Result<Option<File>> {
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;
    match nix::fcntl::open(
        dir,
        OFlag::O_TMPFILE | OFlag::O_RDWR | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    ) {
        Ok(fd) => Ok(Some(File::from(fd))),
        // open(2): EISDIR or EOPNOTSUPP when the kernel or file system lacks O_TMPFILE.
        Err(nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::EISDIR) => Ok(None),
        Err(e) => Err(std::io::Error::from(e)),
    }
}

/// Checks that OUTPUT can be created in `dir`, leaving nothing there.
pub fn probe(dir: &Path) -> Result<()> {
    let refuse =
        |e: &std::io::Error| unpackable!("{}: cannot write there: {}", dir.display(), io_reason(e));
    if unnamed(dir).map_err(|e| refuse(&e))?.is_some() {
        return Ok(());
    }
    // The named probe is created and removed with termination signals held back.
    let _deferred = crate::DeferSignals::new();
    tempfile::Builder::new()
        .prefix(".elfpack-")
        .tempfile_in(dir)
        .map(drop)
        .map_err(|e| refuse(&e))
}

impl Pending {
    pub fn create(dir: &Path) -> Result<Pending> {
        let fail = |e: &std::io::Error| other!("{}: {}", dir.display(), io_reason(e));
        if let Some(file) = unnamed(dir).map_err(|e| fail(&e))? {
            return Ok(Pending::Unnamed {
                file,
                dir: dir.to_path_buf(),
            });
        }
        tempfile::Builder::new()
            .prefix(".elfpack-")
            .tempfile_in(dir)
            .map(Pending::Named)
            .map_err(|e| fail(&e))
    }

    pub fn file(&self) -> &File {
        match self {
            Pending::Unnamed { file, .. } => file,
            Pending::Named(t) => t.as_file(),
        }
    }

    /// Gives the complete file mode `mode` and the name `output`, replacing what was
    /// there.
    pub fn persist(self, output: &Path, mode: u32) -> Result<()> {
        let fail = |e: &std::io::Error| other!("{}: {}", output.display(), io_reason(e));
        self.file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| fail(&e))?;
        match self {
            Pending::Named(t) => t.persist(output).map(drop).map_err(|e| fail(&e.error)),
            Pending::Unnamed { file, dir } => {
                use std::os::fd::AsRawFd;
                let link = |to: &Path| {
                    nix::unistd::linkat(
                        nix::fcntl::AT_FDCWD,
                        format!("/proc/self/fd/{}", file.as_raw_fd()).as_str(),
                        nix::fcntl::AT_FDCWD,
                        to,
                        nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
                    )
                };
                match link(output) {
                    Ok(()) => return Ok(()),
                    Err(nix::errno::Errno::EEXIST) => {}
                    Err(e) => return Err(fail(&e.into())),
                }
                // OUTPUT exists: a name next to it, then an atomic rename over it.
                for n in 0..100u32 {
                    let tmp = dir.join(format!(".elfpack-{}-{n}", std::process::id()));
                    match link(&tmp) {
                        Ok(()) => {
                            return std::fs::rename(&tmp, output).map_err(|e| {
                                let _ = std::fs::remove_file(&tmp);
                                fail(&e)
                            })
                        }
                        Err(nix::errno::Errno::EEXIST) => continue,
                        Err(e) => return Err(fail(&e.into())),
                    }
                }
                Err(other!("{}: no free temporary name", dir.display()))
            }
        }
    }
}

/// The mode a linker gives its output: 0777 without the bits of the process's umask.
pub fn executable_mode() -> u32 {
    // /proc/self/status has the umask without changing it (linux `fs/proc/array.c`,
    // `task_state`, since 4.7); otherwise set it and put it back.
    let from_proc = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        });
    let mask = from_proc.unwrap_or_else(|| {
        use nix::sys::stat::{umask, Mode};
        let old = umask(Mode::from_bits_truncate(0o022));
        umask(old);
        old.bits()
    });
    0o777 & !mask
}
