//! Running child processes with a time limit, for the test files that include it
//! (`#[path] mod`): a hung child is a failed test, with its output shown.
use elfpack_tests::{require, Run};
use std::process::{Command, Stdio};

/// Runs `cmd` under `timeout SECS` (stdin from /dev/null unless `stdin` is given); a
/// timeout fails the test with the child's output.
pub fn run_with_timeout(cmd: &Command, secs: u32, stdin: Option<&[u8]>) -> Run {
    let mut t = Command::new(require("timeout"));
    t.arg("-k")
        .arg("5")
        .arg(secs.to_string())
        .arg(cmd.get_program())
        .args(cmd.get_args());
    if let Some(d) = cmd.get_current_dir() {
        t.current_dir(d);
    }
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => t.env(k, v),
            None => t.env_remove(k),
        };
    }
    let out = match stdin {
        None => t.stdin(Stdio::null()).output(),
        Some(data) => {
            let file = tempfile::tempfile().unwrap();
            std::io::Write::write_all(&mut &file, data).unwrap();
            std::io::Seek::rewind(&mut &file).unwrap();
            t.stdin(file).output()
        }
    }
    .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let r = Run {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        code: out.status.code(),
    };
    assert_ne!(
        r.code,
        Some(124),
        "{cmd:?} timed out after {secs} s\nstdout: {}\nstderr: {}",
        r.stdout,
        r.stderr
    );
    r
}
