//! A packed program meets a vDSO unlike the one it was captured with, as it would on
//! another kernel: the program is started under ptrace, and before its stub runs, the
//! kernel's vDSO in that process is rewritten: two functions trade places in the symbol
//! table, and `__vdso_time` and `__vdso_getcpu` disappear. clock_gettime, gettimeofday,
//! time and getcpu must still work (the stub finds the moved ones by name, and uses the
//! system calls for the missing ones). Under qemu-user there is no vDSO at all; the
//! fixture matrix covers that case.
use elfpack_tests::*;
use nix::sys::ptrace;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

const AT_SYSINFO_EHDR: u64 = 33;

fn auxv_value(pid: i32, tag: u64) -> Option<u64> {
    let raw = std::fs::read(format!("/proc/{pid}/auxv")).unwrap();
    raw.chunks_exact(16).find_map(|e| {
        let t = u64::from_le_bytes(e[..8].try_into().unwrap());
        (t == tag).then(|| u64::from_le_bytes(e[8..].try_into().unwrap()))
    })
}

/// Rewrites the vDSO of the stopped process `pid` as described above.
fn alter_vdso(pid: i32) {
    let base = auxv_value(pid, AT_SYSINFO_EHDR).expect("no vDSO");
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let line = maps.lines().find(|l| l.ends_with("[vdso]")).unwrap();
    let (a, b) = line
        .split_whitespace()
        .next()
        .unwrap()
        .split_once('-')
        .unwrap();
    let len = (u64::from_str_radix(b, 16).unwrap() - u64::from_str_radix(a, 16).unwrap()) as usize;
    let mem = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{pid}/mem"))
        .unwrap();
    let mut image = vec![0u8; len];
    mem.read_exact_at(&mut image, base).unwrap();
    let elf = goblin::elf::Elf::parse(&image).unwrap();
    let dynsym = elf
        .section_headers
        .iter()
        .find(|s| s.sh_type == goblin::elf::section_header::SHT_DYNSYM)
        .unwrap();
    let dynstr = elf.section_headers[dynsym.sh_link as usize].sh_offset as usize;
    let index = |name: &str| {
        elf.dynsyms
            .iter()
            .position(|s| elf.dynstrtab.get_at(s.st_name) == Some(name))
            .unwrap()
    };
    let name_at = |name: &str| dynstr + elf.dynsyms.get(index(name)).unwrap().st_name;
    let (i, j) = (index("__vdso_clock_gettime"), index("__vdso_gettimeofday"));
    let (time_at, getcpu_at) = (name_at("__vdso_time"), name_at("__vdso_getcpu"));
    let entry = |k: usize| dynsym.sh_offset as usize + k * 24;
    let (ei, ej) = (entry(i), entry(j));
    let a = image[ei..ei + 24].to_vec();
    let b = image[ej..ej + 24].to_vec();
    image[ei..ei + 24].copy_from_slice(&b);
    image[ej..ej + 24].copy_from_slice(&a);
    image[time_at..time_at + 11].copy_from_slice(b"__vdso_tim_");
    image[getcpu_at..getcpu_at + 13].copy_from_slice(b"__vdso_getcp_");
    mem.write_all_at(&image, base).unwrap();
    // The process now sees the altered table.
    let mut check = vec![0u8; len];
    mem.read_exact_at(&mut check, base).unwrap();
    assert_eq!(check, image, "the vDSO could not be rewritten");
}

/// Runs `packed ARGS` with its vDSO altered before the first instruction.
fn run_with_altered_vdso(packed: &std::path::Path, args: &[&str], cpu: u32) -> String {
    let mut cmd = Command::new(require("taskset"));
    cmd.arg("-c")
        .arg(cpu.to_string())
        .arg(packed)
        .args(args)
        .stdout(Stdio::piped());
    // taskset execs the packed file: stop at that exec (the second one).
    // SAFETY: between fork and exec only ptrace(PTRACE_TRACEME) runs.
    unsafe {
        cmd.pre_exec(|| ptrace::traceme().map_err(std::io::Error::from));
    }
    let child = spawn(&mut cmd);
    let pid = Pid::from_raw(child.id() as i32);
    let exe = std::fs::canonicalize(packed).unwrap();
    loop {
        match waitpid(pid, None).unwrap() {
            WaitStatus::Stopped(_, _) => {
                if std::fs::read_link(format!("/proc/{pid}/exe")).unwrap() == exe {
                    break;
                }
                ptrace::cont(pid, None).unwrap();
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    alter_vdso(pid.as_raw());
    ptrace::detach(pid, None).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn restores_against_a_different_vdso() {
    let packed = packed(&fixture("fixture-x86_64-pie"), &[]);
    let clock = run_with_altered_vdso(&packed, &["clock"], 1);
    assert_eq!(
        clock,
        "monotonic advances=yes\nrealtime consistent=yes\ngetres=0\n"
    );
    let cpu = run_with_altered_vdso(&packed, &["getcpu"], 1);
    assert_eq!(cpu, "cpu=1 getcpu=0:1\n");
    // And the same program, unaltered, says the same.
    let placed = Placed::new(&packed, Mode::Native, Arch::X86_64);
    assert_eq!(placed.run(&["clock"], b"", None).stdout, clock);
}
