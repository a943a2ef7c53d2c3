//! Fuzzing of what elfpack reads from untrusted files: the ELF reading and program check of
//! `elfpack build` (and the interpreter check behind it), and `elfpack inspect`. proptest
//! mutates valid inputs (bytes changed in the headers, the program and section header
//! tables, the interpreter path and the `.elfpack` document, and truncations), and each
//! case runs the real binary with a deadline. Properties: no panic (exit 101 or a signal),
//! no hang, exactly one error line with a documented status on failure, no OUTPUT left
//! after an error, and the input file never modified. The cases are fixed (a deterministic
//! generator), so CI time is bounded (a few seconds here) and a failure replays;
//! ELFPACK_FUZZ_CASES=N runs N fresh random cases instead.
use elfpack_tests::{elfpack, fixture, scratch, Timed};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Exit status, stderr; panics the test if the child outlives `secs`.
fn run(cmd: &mut Command, secs: u64) -> (Option<i32>, Option<i32>, String) {
    use std::os::unix::process::ExitStatusExt;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let what = format!("{cmd:?}");
    let o = elfpack_tests::wait_output_within(
        elfpack_tests::spawn(cmd),
        &what,
        Duration::from_secs(secs),
    );
    let (status, stderr) = (o.status, String::from_utf8_lossy(&o.stderr).into_owned());
    (status.code(), status.signal(), stderr)
}

/// One mutation: where (a selector mapped into the interesting ranges) and the new byte.
#[derive(Clone, Debug)]
struct Mutation {
    range: usize,
    at: usize,
    byte: u8,
}

fn mutations() -> impl Strategy<Value = (Vec<Mutation>, Option<usize>)> {
    (
        prop::collection::vec(
            (any::<usize>(), any::<usize>(), any::<u8>()).prop_map(|(range, at, byte)| Mutation {
                range,
                at,
                byte,
            }),
            1..8,
        ),
        // A truncation to a fraction of the file, in 1/1024ths, sometimes.
        prop::option::weighted(0.15, 0usize..1024),
    )
}

/// Applies the mutations to `seed`, each inside one of `ranges`.
fn mutate(seed: &[u8], ranges: &[(usize, usize)], m: &(Vec<Mutation>, Option<usize>)) -> Vec<u8> {
    let mut b = seed.to_vec();
    for x in &m.0 {
        let (lo, hi) = ranges[x.range % ranges.len()];
        let hi = hi.min(b.len());
        if hi > lo {
            let at = lo + x.at % (hi - lo);
            b[at] = x.byte;
        }
    }
    if let Some(f) = m.1 {
        b.truncate(b.len() * f / 1024);
    }
    b
}

/// The ranges of an ELF file that its readers interpret: the ELF header, the program
/// header table, the section header table, and the named sections' contents.
fn elf_ranges(bytes: &[u8], sections: &[&str], segments: &[u32]) -> Vec<(usize, usize)> {
    let elf = goblin::elf::Elf::parse(bytes).unwrap();
    let h = &elf.header;
    let mut r = vec![(0, h.e_ehsize as usize)];
    let ph = h.e_phoff as usize;
    r.push((ph, ph + h.e_phnum as usize * h.e_phentsize as usize));
    let sh = h.e_shoff as usize;
    if sh != 0 {
        r.push((sh, sh + h.e_shnum as usize * h.e_shentsize as usize));
    }
    for s in &elf.section_headers {
        if sections.contains(&elf.shdr_strtab.get_at(s.sh_name).unwrap_or("")) {
            let o = s.sh_offset as usize;
            r.push((o, o + s.sh_size as usize));
        }
    }
    for p in &elf.program_headers {
        if segments.contains(&p.p_type) {
            let o = p.p_offset as usize;
            r.push((o, o + p.p_filesz as usize));
        }
    }
    r
}

fn cases(default: u32) -> u32 {
    std::env::var("ELFPACK_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A runner of `n` cases: the same cases at every run (CI), or fresh random ones when
/// ELFPACK_FUZZ_CASES asks for a longer run.
fn runner(n: u32) -> TestRunner {
    let config = Config {
        cases: cases(n),
        failure_persistence: None,
        ..Config::default()
    };
    if std::env::var_os("ELFPACK_FUZZ_CASES").is_some() {
        TestRunner::new(config)
    } else {
        let rng = proptest::test_runner::TestRng::deterministic_rng(config.rng_algorithm);
        TestRunner::new_with_rng(config, rng)
    }
}

/// Checks the properties of one finished run that failed or succeeded.
fn check_outcome(
    what: &str,
    (code, signal, stderr): &(Option<i32>, Option<i32>, String),
    allowed: &[i32],
) -> Result<(), TestCaseError> {
    prop_assert!(
        signal.is_none(),
        "{what}: killed by signal {signal:?}: {stderr}"
    );
    prop_assert!(
        !stderr.contains("panicked") && *code != Some(101),
        "{what}: panic: {stderr}"
    );
    let code = code.unwrap();
    prop_assert!(
        code == 0 || allowed.contains(&code),
        "{what}: exit {code}: {stderr}"
    );
    if code != 0 {
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("elfpack:"))
            .collect();
        prop_assert_eq!(lines.len(), 1, "{}: {}", what, stderr);
    }
    Ok(())
}

#[test]
fn fuzz_build_program_check() {
    let d = scratch();
    let seed = std::fs::read(fixture("hardening-x86_64-pie")).unwrap();
    let ranges = elf_ranges(
        &seed,
        &[
            ".dynamic",
            ".dynsym",
            ".dynstr",
            ".interp",
            ".gnu.version_d",
        ],
        &[goblin::elf::program_header::PT_INTERP],
    );
    let input = d.path().join("prog");
    let out = d.path().join("out");
    let mut runner = runner(300);
    runner
        .run(&mutations(), |m| {
            let bytes = mutate(&seed, &ranges, &m);
            std::fs::write(&input, &bytes).unwrap();
            std::fs::set_permissions(&input, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
            let _ = std::fs::remove_file(&out);
            let r = run(
                Command::new(elfpack()).current_dir(d.path()).args([
                    "build",
                    "./prog",
                    "-o",
                    "out",
                    "-q",
                    "--timeout",
                    "5",
                ]),
                30,
            );
            check_outcome("build", &r, &[1, 3, 4])?;
            prop_assert_eq!(
                std::fs::read(&input).unwrap(),
                bytes,
                "the input was modified"
            );
            if r.0 != Some(0) {
                prop_assert!(!out.exists(), "OUTPUT left after an error: {}", r.2);
            }
            let left: Vec<String> = std::fs::read_dir(d.path())
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "prog" && n != "out")
                .collect();
            prop_assert!(left.is_empty(), "files left: {:?}", left);
            Ok(())
        })
        .unwrap();
}

#[test]
fn fuzz_inspect() {
    let d = scratch();
    let packed = d.path().join("packed");
    let st = Command::new(elfpack())
        .arg("build")
        .arg(fixture("hardening-x86_64-pie"))
        .arg("-o")
        .arg(&packed)
        .args(["-q", "--strip"])
        .status_t();
    assert!(st.success());
    let seed = std::fs::read(&packed).unwrap();
    let ranges = elf_ranges(&seed, &[".elfpack", ".shstrtab"], &[]);
    let input = d.path().join("in");
    let mut runner = runner(300);
    runner
        .run(&mutations(), |m| {
            let bytes = mutate(&seed, &ranges, &m);
            std::fs::write(&input, &bytes).unwrap();
            for json in [false, true] {
                let mut cmd = Command::new(elfpack());
                cmd.arg("inspect");
                if json {
                    cmd.arg("--json");
                }
                let r = run(cmd.arg(&input), 30);
                check_outcome("inspect", &r, &[3])?;
            }
            prop_assert_eq!(
                std::fs::read(&input).unwrap(),
                bytes,
                "the input was modified"
            );
            Ok(())
        })
        .unwrap();
}

/// The seeds are accepted unmodified: the mutations start from valid inputs.
#[test]
fn seeds_are_valid() {
    let d = scratch();
    let r = run(
        Command::new(elfpack())
            .arg("build")
            .arg(fixture("hardening-x86_64-pie"))
            .arg("-o")
            .arg(d.path().join("out"))
            .arg("-q"),
        60,
    );
    assert_eq!(r.0, Some(0), "{}", r.2);
    let r = run(
        Command::new(elfpack())
            .arg("inspect")
            .arg(d.path().join("out")),
        30,
    );
    assert_eq!(r.0, Some(0), "{}", r.2);
}
