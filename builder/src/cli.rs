//! The command line: clap's definitions, the checks of option values, and the
//! [`pipeline::Options`] and [`Verbosity`] that `elfpack build` runs with.
use crate::error::{self, other, Result};
use crate::pipeline;
use crate::report::{print_stdout, Verbosity};
use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

const AFTER_HELP: &str = "\
Exit status: 0 ok, 1 other failure, 2 usage error, 3 the program cannot be packed,
4 capture failed (the program died, could not be loaded, or timed out).
A packed program exits with 127 when its restore stub cannot start it.";

#[derive(Parser)]
#[command(name = "elfpack", version, about = "Pack a dynamically linked ELF program into one self-contained executable", after_help = AFTER_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
pub struct BuildArgs {
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
    env: Vec<(String, String)>,
    /// Remove KEY from the environment of the capture (repeatable).
    #[arg(long = "unset-env", value_name = "KEY")]
    unset_env: Vec<String>,
    /// CPU level the packed program may assume: glibc picks its IFUNC implementations
    /// (memcpy, strlen, ...) for this level at capture, and the packed program refuses to
    /// start on a CPU below it.
    #[arg(long, value_enum, default_value = "baseline")]
    cpu: crate::cpu::Level,
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
    /// Pack even if the program's glibc is outside the versions elfpack is tested with
    /// (2.31 to 2.43), with a warning.
    #[arg(long)]
    untested_glibc: bool,
    /// Keep the captured layout at every run: no address-space randomisation of the
    /// program, ld.so and the libraries (which is on by default, as for the original).
    #[arg(long)]
    no_aslr: bool,
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

impl BuildArgs {
    /// What to build, and how much to say about it.
    pub fn options(&self) -> (pipeline::Options, Verbosity) {
        let options = pipeline::Options {
            program: self.program.clone(),
            output: self.output.clone(),
            timeout: self.timeout,
            env: self.env.clone(),
            unset_env: self.unset_env.clone(),
            cpu: self.cpu,
            stop_at_entry: self.stop_at_entry,
            include: self.include.clone(),
            strip: self.strip,
            untested_glibc: self.untested_glibc,
            aslr: !self.no_aslr,
            args: self.args.clone(),
        };
        let verbosity = match (self.quiet, self.verbose) {
            (true, _) => Verbosity::Quiet,
            (false, true) => Verbosity::Verbose,
            (false, false) => Verbosity::Normal,
        };
        (options, verbosity)
    }
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

/// `--env`: KEY=VALUE with a non-empty KEY, as (KEY, VALUE).
fn parse_env(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err("expected KEY=VALUE".into()),
    }
}

/// The command line. A usage error ends elfpack with one line and exit status 2;
/// `--help` and `--version` print and end it with 0.
pub fn parse() -> Cli {
    let e = match Cli::try_parse() {
        Ok(c) => return c,
        Err(e) => e,
    };
    let text = e.render().to_string();
    if e.use_stderr() {
        // One line, as for every other error: clap's first line, without its usage and
        // hint lines.
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

/// `elfpack completions SHELL`.
pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(
        shell,
        &mut <Cli as clap::CommandFactory>::command(),
        "elfpack",
        &mut script,
    );
    print_stdout(&script)
}

/// `elfpack man`.
pub fn man() -> Result<()> {
    let mut page = Vec::new();
    clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
        .render(&mut page)
        .map_err(|e| other!("writing the manual page: {e}"))
        .and_then(|()| print_stdout(&page))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build_args(args: &[&str]) -> BuildArgs {
        let argv = ["elfpack", "build"].iter().chain(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Build(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn options_and_verbosity() {
        let a = build_args(&["prog", "-o", "out", "--env", "A=b=c", "-q", "--", "x"]);
        let (o, v) = a.options();
        assert_eq!(o.env, [("A".to_string(), "b=c".to_string())]);
        assert_eq!(o.args, [OsString::from("x")]);
        assert_eq!(o.timeout, Duration::from_secs(10));
        assert_eq!(v, Verbosity::Quiet);
        assert_eq!(
            build_args(&["p", "-o", "o", "-v"]).options().1,
            Verbosity::Verbose
        );
        assert_eq!(build_args(&["p", "-o", "o"]).options().1, Verbosity::Normal);
    }

    #[test]
    fn option_values_are_checked() {
        assert!(parse_env("=v").is_err());
        assert!(parse_env("K").is_err());
        assert_eq!(parse_env("K=").unwrap(), ("K".into(), String::new()));
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("inf").is_err());
        assert!(parse_timeout("x").is_err());
        assert_eq!(parse_timeout(" 1.5 ").unwrap(), Duration::from_millis(1500));
    }
}
