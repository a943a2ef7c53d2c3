//! `elfpack`: packs a dynamically linked Linux ELF program into one self-contained
//! executable.
//!
//! Data flows one way: PROGRAM → [`capture`] (ptrace, /proc) → [`image`] (plain data) →
//! [`fixups`] and [`vdso`] (what the stub must redo per run) → [`writer`] (ELF bytes, with
//! the stub from [`stub_blob`]) → OUTPUT.
mod analysis;
mod arch;
mod capture;
mod cpu;
mod descriptor;
mod error;
mod files;
mod fixups;
mod image;
mod inspect;
mod interp;
mod layout;
mod linkmap;
mod meta;
mod normalize;
mod output;
mod program;
mod sections;
mod stub_blob;
mod symbols;
mod vdso;
mod writer;

use clap::{Parser, Subcommand};
use error::{other, unpackable, Error, Result};
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const AFTER_HELP: &str = "\
Exit status: 0 ok, 1 other failure, 2 usage error, 3 the program cannot be packed,
4 capture failed (the program died, could not be loaded, or timed out).
A packed program exits with 127 when its restore stub cannot start it.";

#[derive(Parser)]
#[command(name = "elfpack", version, about = "Pack a dynamically linked ELF program into one self-contained executable", after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Capture PROGRAM after dynamic loading and write a self-contained OUTPUT.
    #[command(after_help = "Examples:\n  elfpack build /bin/ls -o ls.packed\n  elfpack build python3 -o py --timeout 30\n  elfpack build ./app -o app.packed --include libnss_systemd.so.2 --cpu x86-64-v2\n  elfpack build ./prog32 -o p --env LD_LIBRARY_PATH=/opt/i386/lib\n\n".to_string() + AFTER_HELP)]
    Build(BuildArgs),
    /// Show what a packed file holds: versions, CPU level, libraries, regions, sizes.
    #[command(after_help = "Examples:\n  elfpack inspect ls.packed\n  elfpack inspect --json ls.packed | jq .libraries\n\n".to_string() + AFTER_HELP)]
    Inspect {
        /// A file written by `elfpack build`.
        file: PathBuf,
        /// Print the JSON document (schema elfpack-inspect/1).
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  elfpack completions bash > /etc/bash_completion.d/elfpack\n  elfpack completions zsh > ~/.zfunc/_elfpack"
    )]
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff).
    #[command(after_help = "Examples:\n  elfpack man > elfpack.1 && man ./elfpack.1")]
    Man,
}

#[derive(clap::Args)]
struct BuildArgs {
    /// The program: a path, or a name looked up in PATH.
    program: OsString,
    /// Where to write the packed executable.
    #[arg(short, long)]
    output: PathBuf,
    /// Give up the capture after this many seconds.
    #[arg(long, default_value = "10", value_parser = parse_timeout)]
    timeout: Duration,
    /// Set KEY=VALUE in the environment of the capture only (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<String>,
    /// Remove KEY from the environment of the capture (repeatable).
    #[arg(long = "unset-env", value_name = "KEY")]
    unset_env: Vec<String>,
    /// CPU level the packed program may assume: glibc picks its IFUNC implementations
    /// (memcpy, strlen, ...) for this level at capture, and the packed program refuses to
    /// start on a CPU below it.
    #[arg(long, value_enum, default_value = "baseline")]
    cpu: cpu::Level,
    /// Capture at the program's entry point instead of where glibc's ld.so hands over
    /// (then initializers run once, at capture). elfpack does this by itself, with a
    /// warning, for a loader whose `_dl_start` does not return the entry point.
    #[arg(long)]
    stop_at_entry: bool,
    /// Load this library at capture too (a path, or a soname found as ld.so would), so
    /// that a later dlopen() of it needs no file on the target. Repeatable.
    #[arg(long = "include", value_name = "LIB")]
    include: Vec<OsString>,
    /// Leave the symbol table out of OUTPUT.
    #[arg(long)]
    strip: bool,
    /// Print what was captured.
    #[arg(short, long)]
    verbose: bool,
    /// Print nothing but errors.
    #[arg(short, long, conflicts_with = "verbose")]
    quiet: bool,
    /// Arguments for the capture run (the packed program uses its own at every run).
    #[arg(last = true)]
    args: Vec<OsString>,
}

/// `--timeout`: a positive, finite number of seconds that a `Duration` can hold.
fn parse_timeout(s: &str) -> std::result::Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(v > 0.0 && v.is_finite()) {
        return Err("must be a positive number of seconds".into());
    }
    Duration::try_from_secs_f64(v)
        .ok()
        .filter(|d| !d.is_zero() && d.as_secs() <= 1 << 32)
        .ok_or_else(|| "must be between 1 ns and 2^32 seconds".into())
}

/// `--env`: KEY=VALUE with a non-empty KEY.
fn parse_env(s: &str) -> std::result::Result<String, String> {
    match s.split_once('=') {
        Some((k, _)) if !k.is_empty() => Ok(s.to_string()),
        _ => Err("expected KEY=VALUE".into()),
    }
}

/// Writes `bytes` to stdout. A reader that went away (EPIPE) ends elfpack quietly, by
/// SIGPIPE as for other Unix tools; other errors are reported.
pub(crate) fn print_stdout(bytes: &[u8]) -> Result<()> {
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

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let text = e.render().to_string();
            if e.use_stderr() {
                // One line, as for every other error: clap's first line, without its
                // usage and hint lines.
                let first = text.lines().next().unwrap_or("usage error");
                let first = first.strip_prefix("error: ").unwrap_or(first);
                eprintln!("elfpack: {first} (see elfpack --help)");
                std::process::exit(error::EXIT_USAGE);
            }
            // --help and --version.
            if let Err(e) = print_stdout(text.as_bytes()) {
                eprintln!("elfpack: {e}");
                std::process::exit(e.exit_code());
            }
            std::process::exit(0);
        }
    };
    let result = match cli.command {
        Command::Build(a) => build(&a),
        Command::Inspect { file, json } => inspect::run(&file, json),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "elfpack",
                &mut script,
            );
            print_stdout(&script)
        }
        Command::Man => {
            let mut page = Vec::new();
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
                .render(&mut page)
                .map_err(|e| other!("writing the manual page: {e}"))
                .and_then(|()| print_stdout(&page))
        }
    };
    if let Err(e) = result {
        eprintln!("elfpack: {e}");
        std::process::exit(e.exit_code());
    }
}

/// Blocks SIGINT, SIGTERM, SIGHUP and SIGQUIT until dropped.
struct DeferSignals(Option<nix::sys::signal::SigSet>);

impl DeferSignals {
    fn new() -> DeferSignals {
        use nix::sys::signal::{SigSet, SigmaskHow, Signal};
        let mut set = SigSet::empty();
        for s in [
            Signal::SIGINT,
            Signal::SIGTERM,
            Signal::SIGHUP,
            Signal::SIGQUIT,
        ] {
            set.add(s);
        }
        let mut old = SigSet::empty();
        let ok =
            nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old))
                .is_ok();
        DeferSignals(ok.then_some(old))
    }
}

impl Drop for DeferSignals {
    fn drop(&mut self) {
        if let Some(old) = self.0.take() {
            let _ = nix::sys::signal::pthread_sigmask(
                nix::sys::signal::SigmaskHow::SIG_SETMASK,
                Some(&old),
                None,
            );
        }
    }
}

/// glibc's environment aliases of its tunables (glibc 2.36 `elf/dl-tunables.list`,
/// `env_alias`). ld.so and malloc read them once, at start-up: a value present at capture
/// would hold in every run of the packed program.
pub const TUNABLE_ALIASES: &[&str] = &[
    "LD_HWCAP_MASK",
    "MALLOC_ARENA_MAX",
    "MALLOC_ARENA_TEST",
    "MALLOC_CHECK_",
    "MALLOC_MMAP_MAX_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_PERTURB_",
    "MALLOC_TOP_PAD_",
    "MALLOC_TRIM_THRESHOLD_",
];

/// Whether `k` sets a glibc tunable: GLIBC_TUNABLES or one of its aliases.
fn is_tunable(k: &std::ffi::OsStr) -> bool {
    k == "GLIBC_TUNABLES" || TUNABLE_ALIASES.iter().any(|a| k == *a)
}

/// The capture environment, the names of the tunable variables of elfpack's own
/// environment it leaves out (only `--env` sets those), and each `--include` with the file
/// it names.
struct CaptureEnv {
    env: Vec<(OsString, OsString)>,
    dropped: Vec<String>,
    includes: Vec<(OsString, PathBuf)>,
}

fn capture_env(a: &BuildArgs, hwcaps: Option<&str>, arch: program::Arch) -> Result<CaptureEnv> {
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let mut dropped: Vec<String> = Vec::new();
    let mut includes: Vec<(OsString, PathBuf)> = Vec::new();
    env.retain(|(k, _)| {
        if is_tunable(k) {
            let k = k.to_string_lossy().into_owned();
            if !dropped.contains(&k) {
                dropped.push(k);
            }
            return false;
        }
        true
    });
    let mut set = |k: &str, v: &str| {
        env.retain(|(ek, _)| ek != k);
        env.push((k.into(), v.into()));
    };
    // Bind every symbol now, so nothing is left for the lazy resolver after restore.
    set("LD_BIND_NOW", "1");
    for kv in &a.env {
        // parse_env checked the '='.
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        set(k, v);
    }
    env.retain(|(k, _)| !a.unset_env.iter().any(|u| k == u.as_str()));
    if !a.include.is_empty() {
        let lib_path = env
            .iter()
            .find(|(k, _)| k == "LD_LIBRARY_PATH")
            .map(|(_, v)| v.clone());
        let mut libs: Vec<OsString> = Vec::new();
        for l in &a.include {
            let (found, ld_so_finds_it) = program::find_library(l, arch, lib_path.as_deref())?;
            // ld.so knows a library by its DT_SONAME and by the names it was loaded as
            // (l_libname), not by other names of its file: a name that ld.so finds the
            // same way (LD_LIBRARY_PATH, its cache) is preloaded by that name, so that a
            // later dlopen of the name finds it in the image, with or without a
            // DT_SONAME, and also when the name is a link to a file of another soname.
            // check_loaded makes sure of it.
            let by_name = ld_so_finds_it
                && !l.as_bytes().contains(&b'/')
                && !l.as_bytes().contains(&b':')
                && !l.as_bytes().contains(&b' ');
            libs.push(if by_name {
                l.clone()
            } else {
                found.clone().into_os_string()
            });
            includes.push((l.clone(), found));
        }
        let existing = env
            .iter()
            .find(|(k, _)| k == "LD_PRELOAD")
            .map(|(_, v)| v.clone());
        let mut value = OsString::new();
        for (i, part) in existing.into_iter().chain(libs).enumerate() {
            if i > 0 {
                value.push(":");
            }
            value.push(part);
        }
        env.retain(|(k, _)| k != "LD_PRELOAD");
        env.push(("LD_PRELOAD".into(), value));
    }
    if let Some(h) = hwcaps {
        let existing = env
            .iter()
            .find(|(k, _)| k == "GLIBC_TUNABLES")
            .map(|(_, v)| v.to_string_lossy().into_owned());
        let value = cpu::tunables(existing.as_deref(), h);
        env.retain(|(k, _)| k != "GLIBC_TUNABLES");
        env.push(("GLIBC_TUNABLES".into(), value.into()));
    }
    dropped.retain(|d| !env.iter().any(|(k, _)| k == d.as_str()));
    Ok(CaptureEnv {
        env,
        dropped,
        includes,
    })
}

/// The tunable settings of a capture environment, `KEY=VALUE`, as the image keeps them.
fn baked_tunables(env: &[(OsString, OsString)]) -> Vec<String> {
    env.iter()
        .filter(|(k, _)| is_tunable(k))
        .map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.to_string_lossy()))
        .collect()
}

/// After capture: every `--include` is loaded (ld.so ignores a preload it cannot use,
/// with a message, and goes on), and one given by name is in ld.so's link map under that
/// name or as its soname, which a later `dlopen` of the name matches; no loaded object
/// brings a sanitizer runtime.
fn check_loaded(image: &image::Image, includes: &[(OsString, PathBuf)]) -> Result<()> {
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let entries = linkmap::read_entries(image);
    for (name, path) in includes {
        let shown = Path::new(name).display();
        let want = id(path);
        let loaded = want.is_some() && image.objects.iter().any(|o| id(&o.path) == want);
        let by_name = !name.as_bytes().contains(&b'/');
        if by_name {
            if let Some(entries) = &entries {
                let known = entries.iter().any(|e| {
                    e.names.iter().any(|n| n.as_bytes() == name.as_bytes())
                        || program::soname(&e.path).is_some_and(|s| s.as_bytes() == name.as_bytes())
                });
                if known {
                    continue;
                }
                if loaded {
                    return Err(Error::Capture(format!(
                        "--include {shown}: ld.so loaded {} but not under that name, so a later dlopen of it would look for it on the file system",
                        path.display()
                    )));
                }
            }
        }
        if !loaded {
            return Err(Error::Capture(format!(
                "--include {shown}: ld.so did not load {}",
                path.display()
            )));
        }
    }
    for o in &image.objects {
        let Ok(bytes) = files::map(&o.path) else {
            continue;
        };
        if let Some(name) = goblin::elf::Elf::parse(&bytes)
            .ok()
            .and_then(|e| program::sanitizer(&e))
        {
            return Err(program::sanitizer_error(
                &o.path.display().to_string(),
                name,
            ));
        }
    }
    Ok(())
}

/// Refuses an OUTPUT that is the program itself or cannot be written, before capturing.
fn check_output(output: &Path, program: &Path) -> Result<PathBuf> {
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if output.as_os_str().is_empty() || output.file_name().is_none() {
        return Err(unpackable!("{}: not a file name", output.display()));
    }
    if let (Ok(o), Ok(p)) = (std::fs::metadata(output), std::fs::metadata(program)) {
        if o.dev() == p.dev() && o.ino() == p.ino() {
            return Err(unpackable!(
                "{}: OUTPUT is the program itself; choose another name",
                output.display()
            ));
        }
        if o.is_dir() {
            return Err(unpackable!("{}: is a directory", output.display()));
        }
    }
    // OUTPUT is replaced by a rename: never a device, FIFO or socket that happens to be
    // there.
    if let Ok(o) = std::fs::symlink_metadata(output) {
        if !o.is_file() && !o.is_symlink() && !o.is_dir() {
            return Err(unpackable!(
                "{}: exists and is not a regular file",
                output.display()
            ));
        }
    }
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(unpackable!("{}: not a directory", dir.display())),
        Err(e) => return Err(unpackable!("{}: {}", dir.display(), program::io_reason(&e))),
    }
    // Probe writability with the same kind of file the final write uses.
    output::probe(&dir)?;
    Ok(dir)
}

/// The writer's errors as elfpack reports them: an image that cannot be laid out is a
/// program that cannot be packed (exit 3); an I/O error names OUTPUT.
fn writer_error(e: Error, output: &Path) -> Error {
    match e {
        Error::Other(m)
            if m.starts_with("no room below the image")
                || m.contains("more than the kernel accepts")
                || m.starts_with("too many sections") =>
        {
            Error::Unpackable(m)
        }
        Error::Other(m) if m.starts_with("writing") => {
            let reason = m.split_once(": ").map_or(m.as_str(), |(_, r)| r);
            let reason = reason.split(" (os error").next().unwrap_or(reason);
            other!("{}: {reason}", output.display())
        }
        e => e,
    }
}

fn build(a: &BuildArgs) -> Result<()> {
    let t0 = Instant::now();
    let path = program::locate(&a.program)?;
    let prog = program::inspect(&path)?;
    let dir = check_output(&a.output, &path)?;
    let plan = cpu::plan(a.cpu, prog.arch)?;
    let mut argv = vec![a.program.clone()];
    argv.extend(a.args.iter().cloned());
    let CaptureEnv {
        env,
        dropped,
        includes,
    } = capture_env(a, plan.hwcaps.as_deref(), prog.arch)?;
    if !dropped.is_empty() && !a.quiet {
        eprintln!(
            "elfpack: note: captured without {} from this environment (read once at start-up, they would hold in every run; set them with --env)",
            dropped.join(", ")
        );
    }
    let tunables = baked_tunables(&env);
    let opts = capture::Options {
        args: argv,
        env,
        timeout: a.timeout,
        at_entry: a.stop_at_entry,
        skip_code: false,
        vary_aux: false,
        quiet: false,
    };
    let t_capture = Instant::now();
    // Two captures, at once: the second shows which words still vary from run to run.
    // It gets one argument more, which shows where ld.so keeps argc (`_dl_argc`): the
    // stub sets that to each run's own. With --stop-at-entry the initializers ran and may
    // have acted on the arguments, so both captures get the same.
    let argc_probe = (!a.stop_at_entry).then_some(opts.args.len() as u64);
    let mut second_args = opts.args.clone();
    if argc_probe.is_some() {
        second_args.push(OsString::from("elfpack-argc-probe"));
    }
    let (first, second) = std::thread::scope(|s| {
        let other = s.spawn(|| {
            let c = capture::capture(
                &prog,
                &capture::Options {
                    skip_code: true,
                    vary_aux: true,
                    // ld.so's messages are shown once, from the first capture.
                    quiet: true,
                    args: second_args,
                    ..opts.clone()
                },
            )?;
            analysis::prepare(c)
        });
        let first = capture::capture(&prog, &opts).and_then(analysis::prepare);
        (
            first,
            other
                .join()
                .unwrap_or_else(|_| Err(other!("the second capture failed"))),
        )
    });
    let (first, second) = (first?, second?);
    check_loaded(&first.image, &includes)?;
    let capture_time = t_capture.elapsed();
    let (fixup_notes, warnings) = (first.notes.clone(), first.warnings.clone());
    let analysed = analysis::combine(first, second, argc_probe)?;
    let (image, varying, unknown) = (&analysed.image, &analysed.varying, &analysed.unknown_vdso);
    let target = descriptor::Target {
        cpu_needs: plan.needs,
        min_kernel: meta::min_kernel(&image.objects),
        cpu_level: plan.name.clone(),
    };
    let t_symbols = Instant::now();
    let symbols = if a.strip {
        Vec::new()
    } else {
        symbols::collect(&image.objects)
    };
    let symbols_time = t_symbols.elapsed();
    let nsyms = symbols.len() as u64;
    let t_write = Instant::now();
    // From here to the rename, Ctrl-C and friends wait: an interrupted write would leave
    // the temporary file behind. They are delivered once OUTPUT is complete (or the error
    // is reported, and the temporary file removed).
    let deferred = DeferSignals::new();
    let tmp = output::Pending::create(&dir)?;
    let stats = writer::write(
        tmp.file(),
        &analysed,
        &target,
        &symbols,
        |image, st, usage| {
            let mut m = meta::build(
                image,
                &target,
                &prog,
                usage,
                st.stub_size,
                st.segments as u64,
                nsyms,
            );
            m.tunables = tunables.clone();
            serde_json::to_vec(&m).expect("serialisable")
        },
    )
    .map_err(|e| writer_error(e, &a.output))?;
    let write_time = t_write.elapsed();
    tmp.persist(&a.output, output::executable_mode())?;
    drop(deferred);
    if !a.quiet {
        for w in warnings
            .iter()
            .filter(|w| w.contains("not glibc's handover"))
        {
            eprintln!("elfpack: warning: {w}");
        }
        if !prog.secure_list_known {
            eprintln!(
                "elfpack: warning: {} is not glibc 2.36's ld.so: if the packed file is made setuid, it removes glibc 2.36's list of unsecure variables, not this loader's",
                prog.interp.display()
            );
        }
    }
    if a.verbose {
        for w in &warnings {
            eprintln!("elfpack: note: {w}");
        }
        for n in fixup_notes.iter().take(5) {
            eprintln!("elfpack: note: left as is: {n}");
        }
        if fixup_notes.len() > 5 {
            eprintln!(
                "elfpack: note: ... and {} more such words",
                fixup_notes.len() - 5
            );
        }
        if !varying.is_empty() {
            let list: Vec<String> = varying.iter().map(|a| format!("{a:#x}")).collect();
            eprintln!(
                "elfpack: note: zeroed words that differ between captures: {}",
                list.join(" ")
            );
        }
        if !unknown.is_empty() {
            eprintln!(
                "elfpack: note: vDSO functions left as they are: {}",
                unknown.join(", ")
            );
        }
        eprintln!("elfpack: interpreter {}", prog.interp.display());
        eprintln!(
            "elfpack: CPU level {} (needs {}); masked at capture: {}",
            plan.name,
            cpu::names(plan.needs),
            plan.hwcaps.as_deref().unwrap_or("nothing")
        );
        for o in &image.objects {
            eprintln!("  object {:#014x} {}", o.base, o.path.display());
        }
        if let Some(v) = &analysed.vdso {
            let names: Vec<&str> = v.entries.iter().map(|e| e.name.as_str()).collect();
            eprintln!(
                "  vDSO proxy {:#x}-{:#x}: {}",
                v.start,
                v.end,
                names.join(" ")
            );
        }
        for f in &analysed.fixups {
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
        eprintln!(
            "elfpack: {} regions, {} fixups, {} vDSO entries; {} bytes stored, {} zero-filled, {} segments; stub {} bytes at {:#x}",
            image.regions.len(),
            analysed.fixups.len(),
            analysed.vdso.as_ref().map_or(0, |v| v.entries.len()),
            stats.stored,
            stats.zero,
            stats.segments,
            stats.stub_size,
            stats.stub_base
        );
        eprintln!(
            "elfpack: capture {:.1} ms (two, at once), symbols {:.1} ms, write {:.1} ms, total {:.1} ms",
            capture_time.as_secs_f64() * 1e3,
            symbols_time.as_secs_f64() * 1e3,
            write_time.as_secs_f64() * 1e3,
            t0.elapsed().as_secs_f64() * 1e3
        );
    } else if !a.quiet {
        eprintln!(
            "elfpack: packed {} ({}) into {} ({} bytes)",
            prog.path.display(),
            prog.arch.name(),
            a.output.display(),
            stats.file_size
        );
    }
    Ok(())
}
