//! The harness itself: a child that hangs fails its test within the deadline, with its
//! output, and leaves nothing running; and no test starts a child outside the harness's
//! deadline.
use elfpack_tests::*;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn a_hung_child_fails_the_test_and_is_killed_with_its_descendants() {
    let mut cmd = Command::new("/bin/sh");
    cmd.args([
        "-c",
        "sleep 1000 & echo grandchild=$!; echo on stderr >&2; wait",
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let child = spawn(&mut cmd);
    let pid = child.id();
    let t = Instant::now();
    let outcome = std::panic::catch_unwind(|| {
        wait_output_within(child, "a hanging shell", Duration::from_secs(1))
    });
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "the deadline was not kept"
    );
    let msg = match outcome {
        Ok(o) => panic!("a hung child was reported as finished: {o:?}"),
        Err(e) => e
            .downcast_ref::<String>()
            .cloned()
            .expect("a panic message"),
    };
    assert!(
        msg.contains("a hanging shell: still running after 1 s, killed")
            && msg.contains("on stderr"),
        "{msg}"
    );
    let grandchild: u32 = msg
        .split("grandchild=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no grandchild pid in the output shown: {msg}"));
    for p in [pid, grandchild] {
        // Reaped, or a zombie about to be: either way no longer running. SIGKILL takes a
        // moment to end a process, so look for up to 5 s.
        let state = || std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        let running = |s: &str| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        };
        let t = Instant::now();
        while running(&state()) && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let s = state();
        assert!(!running(&s), "process {p} still runs: {s}");
    }
}

/// Every place in the test sources that starts or waits for a child goes through the
/// harness (`Timed`, `run_cmd`, `wait_output`, `spawn`), which puts a deadline on it.
#[test]
fn no_test_waits_for_a_child_without_a_deadline() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // Spelled in pieces so that this file does not match itself.
    let forbidden = [
        concat!(".out", "put()"),
        concat!(".sta", "tus()"),
        concat!(".wa", "it()"),
        concat!("wait_with", "_output"),
        concat!(".spa", "wn()"),
    ];
    let mut offenders = Vec::new();
    for dir in ["e2e", "src", "benches"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for (n, line) in text.lines().enumerate() {
                for f in forbidden {
                    if line.contains(f) {
                        offenders.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                    }
                }
            }
        }
    }
    // The harness's own two calls, inside `spawn` and `wait_output_within`.
    let allowed = [
        concat!("tests/src/lib.rs: match cmd.spa", "wn() {"),
        concat!("tests/src/lib.rs: let _ = tx.send(child.wa", "it());"),
    ];
    offenders.retain(|o| {
        !allowed.iter().any(|a| {
            let (file, code) = a.split_once(": ").unwrap();
            o.contains(file) && o.ends_with(code)
        })
    });
    assert!(
        offenders.is_empty(),
        "children started or awaited without a deadline:\n{}",
        offenders.join("\n")
    );
}
