//! The output's program headers and stack: a program with 200 generated libraries packs into
//! at most 32 program headers and runs like the original; a library that needs an
//! executable stack (a GCC nested-function trampoline) gets one in the packed program too.
//!
//! Every child process runs under the harness's deadline: a hung child is a failed test with
//! its output.
use elfpack_tests::{
    assert_same_stdout, pack_to, require, run_cmd_within, scratch, test_env, Arch, ArchTest, Run,
};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The most program headers an output may have (kernels before 6.17 accept one page).
const MAX_PHDRS: usize = 32;
/// Seconds any child may run.
const CHILD_TIMEOUT: u64 = 120;

fn run(cmd: Command) -> Run {
    run_cmd_within(cmd, b"", std::time::Duration::from_secs(CHILD_TIMEOUT))
}

/// Compiles C sources with the system C compiler (`-m32` for i386).
fn cc(arch: Arch, args: &[&str]) {
    let mut c = Command::new(require("cc"));
    if arch == Arch::I386 {
        c.arg("-m32");
    }
    c.args(args);
    let r = run(c);
    assert_eq!(r.code, Some(0), "cc {args:?} failed: {}", r.stderr);
}

fn pack(input: &Path, output: &Path, extra: &[&str]) {
    pack_to(input, output, extra);
}

/// The program headers of an ELF file: (count, PT_GNU_STACK flags).
fn phdrs(path: &Path) -> (usize, Option<u32>) {
    let bytes = std::fs::read(path).unwrap();
    let elf = goblin::elf::Elf::parse(&bytes).unwrap();
    let stack = elf
        .program_headers
        .iter()
        .find(|p| p.p_type == goblin::elf::program_header::PT_GNU_STACK)
        .map(|p| p.p_flags);
    (elf.program_headers.len(), stack)
}

/// Runs `prog ARGS` with the tests' fixed environment (plus `extra_env`).
fn run_prog(prog: &Path, args: &[&str], extra_env: &[(&str, &str)]) -> Run {
    let mut c = Command::new(prog);
    c.args(args)
        .env_clear()
        .envs(test_env())
        .envs(extra_env.iter().copied());
    run(c)
}

const LIBRARIES: usize = 200;

/// Writes and builds `LIBRARIES` shared libraries and a program that uses each; returns
/// (program, library directory).
fn many_libraries(dir: &Path, arch: Arch) -> (PathBuf, PathBuf) {
    let libdir = dir.join("lib");
    std::fs::create_dir_all(&libdir).unwrap();
    let mut main = String::from("#include <stdio.h>\n#include <string.h>\n");
    for i in 0..LIBRARIES {
        // Each library has code, read-only data, initialised data, a constructor, and a
        // bss whose size varies (zero-fill runs of many sizes).
        let src = format!(
            "static const char name[] = \"lib{i}\";\n\
             int data{i} = {i};\n\
             static char bss[{bss}];\n\
             static int ctor_ran;\n\
             __attribute__((constructor)) static void init(void) {{ ctor_ran = 1; bss[{i}] = 1; }}\n\
             int value{i}(int x) {{ return x * data{i} + ctor_ran + bss[{i}] + (int)sizeof name; }}\n",
            bss = 4096 * (1 + i % 7)
        );
        let c = dir.join(format!("l{i}.c"));
        std::fs::write(&c, src).unwrap();
        main.push_str(&format!("int value{i}(int);\n"));
    }
    main.push_str(
        "int main(int argc, char **argv) {\n  long sum = 0;\n  int x = argc + (argc > 1 ? (int)strlen(argv[argc - 1]) : 0);\n",
    );
    for i in 0..LIBRARIES {
        main.push_str(&format!("  sum += value{i}(x);\n"));
    }
    main.push_str("  printf(\"libraries=%d sum=%ld\\n\", ");
    main.push_str(&LIBRARIES.to_string());
    main.push_str(", sum);\n  return (int)(sum % 100);\n}\n");
    std::fs::write(dir.join("main.c"), main).unwrap();
    // Build the libraries on two threads (the machine has few cores).
    std::thread::scope(|s| {
        for half in 0..2 {
            let libdir = &libdir;
            s.spawn(move || {
                for i in (half..LIBRARIES).step_by(2) {
                    let c = dir.join(format!("l{i}.c"));
                    let so = libdir.join(format!("libmany{i}.so"));
                    cc(
                        arch,
                        &[
                            "-shared",
                            "-fPIC",
                            "-O1",
                            c.to_str().unwrap(),
                            "-o",
                            so.to_str().unwrap(),
                        ],
                    );
                }
            });
        }
    });
    let prog = dir.join("many");
    let mut args: Vec<String> = vec![
        "-O1".into(),
        dir.join("main.c").display().to_string(),
        "-o".into(),
        prog.display().to_string(),
        format!("-L{}", libdir.display()),
        "-Wl,--no-as-needed".into(),
    ];
    args.extend((0..LIBRARIES).map(|i| format!("-lmany{i}")));
    cc(arch, &args.iter().map(String::as_str).collect::<Vec<_>>());
    (prog, libdir)
}

fn check_many_libraries(arch: Arch) {
    let dir = scratch();
    let (prog, libdir) = many_libraries(dir.path(), arch);
    let ld_path = libdir.display().to_string();
    let env = [("LD_LIBRARY_PATH", ld_path.as_str())];
    let packed = dir.path().join("many.packed");
    pack(
        &prog,
        &packed,
        &["--env", &format!("LD_LIBRARY_PATH={ld_path}")],
    );
    let (count, _) = phdrs(&packed);
    assert!(
        count <= MAX_PHDRS,
        "{}: {count} program headers, more than {MAX_PHDRS}",
        arch.tag()
    );
    for args in [&[][..], &["two", "arguments"][..]] {
        let original = run_prog(&prog, args, &env);
        assert!(
            original.stdout.contains(&format!("libraries={LIBRARIES} ")),
            "the original did not run: {original:?}"
        );
        // The packed program needs no library: run it without LD_LIBRARY_PATH.
        let p = run_prog(&packed, args, &[]);
        assert_same_stdout(&format!("{} {args:?}", arch.tag()), &p, &original);
        let q = run_prog(&require(arch.qemu()), &[packed.to_str().unwrap()], &[]);
        if args.is_empty() {
            assert_same_stdout(&format!("{} under qemu", arch.tag()), &q, &original);
        }
    }
}

#[test]
fn two_hundred_libraries_x86_64() {
    check_many_libraries(Arch::X86_64);
}

#[test]
fn two_hundred_libraries_i386() {
    check_many_libraries(Arch::I386);
}

/// A library whose PT_GNU_STACK is RWE (GCC nested-function trampoline), linked by a
/// program whose own is RW.
fn exec_stack(arch: Arch, dir: &Path) -> (PathBuf, PathBuf) {
    let lib = dir.join("libtramp.c");
    std::fs::write(
        &lib,
        "int tramp_apply(int (*f)(int), int x) { return f(x); }\n\
         int tramp_sum(int n) {\n\
           int total = 0;\n\
           int add(int v) { total += v; return total; }\n\
           for (int i = 1; i <= n; i++) tramp_apply(add, i);\n\
           return total;\n\
         }\n",
    )
    .unwrap();
    let main = dir.join("main.c");
    std::fs::write(
        &main,
        "#include <stdio.h>\nint tramp_sum(int n);\n\
         int main(int argc, char **argv) {\n\
           (void)argv;\n\
           printf(\"tramp_sum=%d\\n\", tramp_sum(argc * 10));\n\
           return tramp_sum(3);\n\
         }\n",
    )
    .unwrap();
    let libdir = dir.join("lib");
    std::fs::create_dir_all(&libdir).unwrap();
    let so = libdir.join("libtramp.so");
    cc(
        arch,
        &[
            "-shared",
            "-fPIC",
            "-Wl,-z,execstack",
            lib.to_str().unwrap(),
            "-o",
            so.to_str().unwrap(),
        ],
    );
    let prog = dir.join("tramp");
    cc(
        arch,
        &[
            "-Wl,-z,noexecstack",
            main.to_str().unwrap(),
            &format!("-L{}", libdir.display()),
            "-ltramp",
            "-o",
            prog.to_str().unwrap(),
        ],
    );
    (prog, libdir)
}

fn check_exec_stack(arch: Arch) {
    let dir = scratch();
    let (prog, libdir) = exec_stack(arch, dir.path());
    let (_, stack) = phdrs(&prog);
    assert_eq!(
        stack,
        Some(goblin::elf::program_header::PF_R | goblin::elf::program_header::PF_W),
        "the program's own stack must not be executable"
    );
    let ld_path = libdir.display().to_string();
    let packed = dir.path().join("tramp.packed");
    pack(
        &prog,
        &packed,
        &["--env", &format!("LD_LIBRARY_PATH={ld_path}")],
    );
    let (_, stack) = phdrs(&packed);
    assert_ne!(
        stack.unwrap_or(0) & goblin::elf::program_header::PF_X,
        0,
        "the packed program's stack is not executable"
    );
    let env = [("LD_LIBRARY_PATH", ld_path.as_str())];
    for args in [&[][..], &["x", "y"][..]] {
        let original = run_prog(&prog, args, &env);
        assert!(original.stdout.starts_with("tramp_sum="), "{original:?}");
        let p = run_prog(&packed, args, &[]);
        assert_same_stdout(&format!("{} {args:?}", arch.tag()), &p, &original);
    }
    // Under qemu-user too (compared with the original under qemu).
    let qemu = require(arch.qemu());
    let original = run_prog(&qemu, &[prog.to_str().unwrap()], &env);
    let q = run_prog(&qemu, &[packed.to_str().unwrap()], &[]);
    assert_same_stdout(&format!("{} under qemu", arch.tag()), &q, &original);
}

#[test]
fn library_needing_an_executable_stack_x86_64() {
    check_exec_stack(Arch::X86_64);
}

#[test]
fn library_needing_an_executable_stack_i386() {
    check_exec_stack(Arch::I386);
}

#[test]
fn program_without_executable_stack_keeps_it_so() {
    let dir = scratch();
    let packed = dir.path().join("packed");
    pack(&elfpack_tests::fixture("fixture-x86_64-pie"), &packed, &[]);
    let (count, stack) = phdrs(&packed);
    assert!(count <= MAX_PHDRS, "{count} program headers");
    assert_eq!(
        stack,
        Some(goblin::elf::program_header::PF_R | goblin::elf::program_header::PF_W)
    );
}
