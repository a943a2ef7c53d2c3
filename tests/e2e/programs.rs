//! Real programs of this machine, packed and compared with the originals on the same
//! input: natively, under qemu-user, and (for those that need no files of their own) in an
//! empty chroot.
use elfpack_tests::*;
use std::path::Path;

/// Packs `prog` for `mode` and compares `args` + `stdin` runs with the original.
fn compare(prog: &str, mode: Mode, args: &[&str], stdin: &[u8], cwd: Option<&Path>) -> Run {
    let orig = Path::new(prog);
    assert!(orig.exists(), "{prog} is not installed");
    let packed = packed(orig, &[]);
    let placed = Placed::new(&packed, mode, Arch::X86_64);
    let mut cmd = placed.command(args, None);
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    let p = run_cmd(cmd, stdin);
    let mut ocmd = std::process::Command::new(orig);
    std::os::unix::process::CommandExt::arg0(&mut ocmd, placed.argv0());
    ocmd.args(args).env_clear().envs(test_env());
    if let Some(d) = cwd {
        ocmd.current_dir(d);
    }
    let o = run_cmd(ocmd, stdin);
    assert_same(&format!("{prog} {args:?} {mode:?}"), &p, &o);
    p
}

fn fixed_dir() -> tempfile::TempDir {
    let d = scratch();
    let tree = d.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    for (name, body) in [("b.txt", "bee\n"), ("a.txt", "ay\n"), ("c", "")] {
        std::fs::write(tree.join(name), body).unwrap();
    }
    std::fs::create_dir(tree.join("sub")).unwrap();
    d
}

const TEXT: &[u8] = b"pear\napple\nfig\nbanana\napple\nZebra\n10\n9\n";

#[test]
fn ls_native_and_qemu() {
    let d = fixed_dir();
    for mode in [Mode::Native, Mode::Qemu] {
        let r = compare(
            "/bin/ls",
            mode,
            &["-la", "--time-style=+", "-n", "tree"],
            b"",
            Some(d.path()),
        );
        assert!(r.stdout.contains("b.txt"), "{}", r.stdout);
        compare("/bin/ls", mode, &["-1R", "tree"], b"", Some(d.path()));
    }
}

#[test]
fn sort_all_modes() {
    for mode in ALL_MODES {
        let r = compare("/usr/bin/sort", mode, &[], TEXT, None);
        assert!(r.stdout.starts_with("10\n9\nZebra\napple"), "{}", r.stdout);
        compare("/usr/bin/sort", mode, &["-n", "-r", "-u"], TEXT, None);
    }
}

#[test]
fn sha256sum_all_modes() {
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    for mode in ALL_MODES {
        compare("/usr/bin/sha256sum", mode, &[], &big, None);
    }
}

#[test]
fn gzip_round_trip() {
    let text: Vec<u8> = TEXT.iter().cycle().take(500_000).copied().collect();
    for mode in ALL_MODES {
        let z = compare("/bin/gzip", mode, &["-c", "-9", "-n"], &text, None);
        let _ = z;
        // Decompress the original gzip's output with the packed gzip.
        let orig = run_cmd_bytes("/bin/gzip", &["-c", "-9", "-n"], &text);
        let packed = packed(Path::new("/bin/gzip"), &[]);
        let placed = Placed::new(&packed, mode, Arch::X86_64);
        let out = run_cmd_raw(placed.command(&["-d", "-c"], None), &orig);
        assert_eq!(out, text, "{mode:?}: gzip round trip");
    }
}

#[test]
fn python3_native_and_qemu() {
    let script = "import sys, json, hashlib, re, os\n\
                  print(sys.argv[1:], json.dumps({'k': [1, 2.5, None]}), hashlib.sha256(b'abc').hexdigest())\n\
                  print(sorted(re.findall(r'\\d+', 'a1b22c333')), os.environ['ELFPACK_TEST_VAR'])\n\
                  print(sum(i * i for i in range(100000)))\n\
                  sys.exit(3)";
    for mode in [Mode::Native, Mode::NoAslr, Mode::Nobody, Mode::Qemu] {
        let r = compare(
            "/usr/bin/python3",
            mode,
            &["-c", script, "x", "y z"],
            b"",
            None,
        );
        assert_eq!(r.code, Some(3));
    }
}

#[test]
fn bash_native_and_qemu() {
    let script = "set -e; x=$((6*7)); echo \"answer $x $#: $*\"; for i in 1 2 3; do printf '%s-' $i; done; echo; \
                  echo \"${BASH_VERSINFO[0]}\"; read -r line; echo \"read: $line\"; exit 4";
    for mode in [Mode::Native, Mode::Chroot, Mode::Qemu] {
        let r = compare(
            "/bin/bash",
            mode,
            &["-c", script, "arg0", "p1", "p 2"],
            b"from stdin\n",
            None,
        );
        assert_eq!(r.code, Some(4));
    }
}

/// The sysroot of real i386 programs that `tests/setup` unpacks from Debian's packages.
fn i386_sysroot() -> std::path::PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/i386-sysroot");
    assert!(
        p.join("usr/bin/sqlite3").exists(),
        "{} missing: run tests/setup --tests",
        p.display()
    );
    p
}

fn i386_libpath(root: &Path) -> String {
    format!(
        "{}:{}",
        root.join("lib/i386-linux-gnu").display(),
        root.join("usr/lib/i386-linux-gnu").display()
    )
}

/// Packs a program of the i386 sysroot (its libraries found through LD_LIBRARY_PATH at
/// capture only) and compares it, run in `mode` without that path, with the original run
/// with it.
fn compare_i386(rel: &str, mode: Mode, args: &[&str], stdin: &[u8]) -> Run {
    let root = i386_sysroot();
    let orig = root.join(rel);
    let libpath = format!("--env=LD_LIBRARY_PATH={}", i386_libpath(&root));
    let packed = packed(&orig, &[libpath.as_str()]);
    let placed = Placed::new(&packed, mode, Arch::I386);
    let p = run_cmd(placed.command(args, None), stdin);
    let mut ocmd = std::process::Command::new(&orig);
    std::os::unix::process::CommandExt::arg0(&mut ocmd, placed.argv0());
    ocmd.args(args)
        .env_clear()
        .envs(test_env())
        .env("LD_LIBRARY_PATH", i386_libpath(&root));
    let o = run_cmd(ocmd, stdin);
    assert_same(&format!("i386 {rel} {args:?} {mode:?}"), &p, &o);
    p
}

#[test]
fn i386_coreutils_gzip_sqlite3() {
    let big: Vec<u8> = (0..1_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    let sql = b"create table t(k text, v int); insert into t values('a', 1), ('b', 41);\n\
                select k, v + 1 from t order by k; select sqlite_version() is not null;\n";
    for mode in [Mode::Native, Mode::Chroot, Mode::Qemu] {
        let r = compare_i386("usr/bin/sort", mode, &["-r"], TEXT);
        assert!(r.stdout.starts_with("pear\n"), "{}", r.stdout);
        compare_i386("usr/bin/sha256sum", mode, &[], &big);
        compare_i386("bin/gzip", mode, &["-c", "-6", "-n"], &big);
        let r = compare_i386("usr/bin/sqlite3", mode, &[], sql);
        assert!(r.stdout.contains("b|42"), "{}", r.stdout);
    }
    compare_i386("bin/ls", Mode::Native, &["-1", "/"], b"");
}

/// Java: the launcher loads libjli, then libjvm, libjava and friends with dlopen. Packed with
/// the C++ runtime, libgcc_s and zlib included (libjvm and libzip need them), it runs a
/// class natively, in a root that holds nothing but the packed launcher, the class and
/// the JDK's own directory (bind-mounted read-only): no ld.so, no libc, no /proc; and
/// under qemu-user.
#[test]
fn java_natively_and_in_an_empty_root() {
    let java = require("java");
    let javac = require("javac");
    let home = std::fs::canonicalize(&java)
        .unwrap()
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf();
    let d = scratch();
    let classes = d.path().join("root/classes");
    std::fs::create_dir_all(&classes).unwrap();
    let src = d.path().join("Hello.java");
    std::fs::write(
        &src,
        "public class Hello { public static void main(String[] a) throws Exception {\n\
         java.util.zip.CRC32 c = new java.util.zip.CRC32(); c.update(String.join(\",\", a).getBytes());\n\
         System.out.println(a.length + \" \" + String.join(\",\", a) + \" \" + Long.toHexString(c.getValue())); } }\n",
    )
    .unwrap();
    let mut c = std::process::Command::new(&javac);
    c.arg("-d").arg(&classes).arg(&src);
    let r = run_cmd(c, b"");
    assert_eq!(r.code, Some(0), "javac: {}", r.stderr);

    let packed = packed(
        &java,
        &[
            "--include",
            "libstdc++.so.6",
            "--include",
            "libgcc_s.so.1",
            "--include",
            "libz.so.1",
        ],
    );
    let args = ["-Xshare:auto", "-cp", "/classes", "Hello", "x", "two words"];
    let mut o = std::process::Command::new(&java);
    o.args(["-cp"]).arg(&classes).args(&args[3..]);
    let o = run_cmd(o, b"");
    assert_eq!(o.code, Some(0), "{}", o.stderr);

    let mut n = std::process::Command::new(&packed);
    n.args(["-cp"]).arg(&classes).args(&args[3..]);
    let n = run_cmd(n, b"");
    assert_same("java natively", &n, &o);
    let mut q = std::process::Command::new(require("qemu-x86_64"));
    q.arg(&packed).args(["-cp"]).arg(&classes).args(&args[3..]);
    let q = without_qemu_warnings(run_cmd(q, b""));
    assert_same("java under qemu-user", &q, &o);

    let root = d.path().join("root");
    let inside = root.join(home.strip_prefix("/").unwrap());
    std::fs::create_dir_all(&inside).unwrap();
    std::fs::copy(&packed, root.join("java")).unwrap();
    let script = format!(
        "'{}' --bind -o ro '{}' '{}' && exec '{}' '{}' /java \"$@\"",
        require("mount").display(),
        home.display(),
        inside.display(),
        require("chroot").display(),
        root.display()
    );
    let mut e = std::process::Command::new(require("unshare"));
    e.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
        "sh",
    ])
    .args(args)
    .env_clear()
    .envs(test_env());
    let e = run_cmd(e, b"");
    assert_same("java in an empty root", &e, &o);
}
