//! `elfpack build`, stage by stage: [`prepare`] (find and inspect PROGRAM, check OUTPUT,
//! choose the CPU level, assemble the capture environment), then [`build`] (capture twice,
//! find the fixups, normalise, write OUTPUT). Neither prints: what they did comes back as
//! values, for [`crate::report`].
use crate::env::{self, CaptureEnv};
use crate::error::{other, Error, Result};
use crate::image::Image;
use crate::signals::DeferSignals;
use crate::warning::Warning;
use crate::{capture, checks, cpu, fixups, meta, normalize, output, program, sections};
use crate::{symbols, vdso, writer};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What to build: the command line of `elfpack build`, checked.
#[derive(Clone, Debug)]
pub struct Options {
    /// PROGRAM: a path, or a name looked up in PATH.
    pub program: OsString,
    /// OUTPUT.
    pub output: PathBuf,
    /// `--timeout`.
    pub timeout: Duration,
    /// `--env`, as (KEY, VALUE).
    pub env: Vec<(String, String)>,
    /// `--unset-env`.
    pub unset_env: Vec<String>,
    /// `--cpu`.
    pub cpu: cpu::Level,
    /// `--stop-at-entry`.
    pub stop_at_entry: bool,
    /// `--include`.
    pub include: Vec<OsString>,
    /// `--strip`.
    pub strip: bool,
    /// The arguments of the capture run.
    pub args: Vec<OsString>,
}

/// What [`prepare`] found: the program, where OUTPUT goes, the CPU level and the capture
/// environment.
pub struct Prepared {
    started: Instant,
    program: program::Program,
    dir: PathBuf,
    cpu: cpu::Plan,
    env: CaptureEnv,
    /// What is worth saying before the capture.
    pub warnings: Vec<Warning>,
}

/// What [`build`] did.
pub struct Packed {
    pub program: program::Program,
    pub output: PathBuf,
    pub cpu: cpu::Plan,
    /// The image as written.
    pub image: Image,
    pub stats: writer::Stats,
    /// Warnings and notes, in the order they arose.
    pub warnings: Vec<Warning>,
    /// The fixup analysis's words that it left as they are, described.
    pub left_as_is: Vec<String>,
    /// Words zeroed because they differ between the two captures.
    pub zeroed: Vec<u64>,
    /// vDSO functions the proxy does not know, left as they are.
    pub vdso_left: Vec<String>,
    pub times: Times,
}

/// How long the stages took.
pub struct Times {
    /// Both captures (they run at once).
    pub capture: Duration,
    pub symbols: Duration,
    pub write: Duration,
    pub total: Duration,
}

/// The first stage: everything that can be refused before capturing.
pub fn prepare(o: &Options) -> Result<Prepared> {
    let started = Instant::now();
    let path = program::locate(&o.program)?;
    let program = program::inspect(&path)?;
    let dir = checks::check_output(&o.output, &path)?;
    let cpu = cpu::plan(o.cpu, program.arch)?;
    let env = env::capture_env(o, cpu.hwcaps.as_deref(), program.arch)?;
    let mut warnings = Vec::new();
    if !env.dropped.is_empty() {
        warnings.push(Warning::TunablesDropped(env.dropped.clone()));
    }
    Ok(Prepared {
        started,
        program,
        dir,
        cpu,
        env,
        warnings,
    })
}

/// The two captures, each with its fixups found and its thread state reset.
struct Captures {
    image: Image,
    stack: capture::StackInfo,
    notes: Vec<String>,
    warnings: Vec<String>,
    /// The second capture, for what varies from run to run.
    image2: Image,
    stack2: capture::StackInfo,
    /// The first capture's argc, when the second got one argument more.
    argc_probe: Option<u64>,
}

/// Captures PROGRAM twice, at once: the second shows which words still vary from run to
/// run. It gets one argument more, which shows where ld.so keeps argc (`_dl_argc`): the
/// stub sets that to each run's own. With --stop-at-entry the initializers ran and may
/// have acted on the arguments, so both captures get the same.
fn capture_twice(o: &Options, p: &Prepared) -> Result<Captures> {
    let mut args = vec![o.program.clone()];
    args.extend(o.args.iter().cloned());
    let opts = capture::Options {
        args,
        env: p.env.env.clone(),
        timeout: o.timeout,
        at_entry: o.stop_at_entry,
        skip_code: false,
        vary_aux: false,
        quiet: false,
    };
    let argc_probe = (!o.stop_at_entry).then_some(opts.args.len() as u64);
    let mut second_args = opts.args.clone();
    if argc_probe.is_some() {
        second_args.push(OsString::from("elfpack-argc-probe"));
    }
    let prog = &p.program;
    let (first, second) = std::thread::scope(|s| {
        let other = s.spawn(|| {
            let c = capture::capture(
                prog,
                &capture::Options {
                    skip_code: true,
                    vary_aux: true,
                    // ld.so's messages are shown once, from the first capture.
                    quiet: true,
                    args: second_args,
                    ..opts.clone()
                },
            )?;
            let mut image = c.image;
            fixups::find(&mut image, &c.stack)?;
            normalize::reset_thread_state(&mut image);
            Ok::<_, Error>((image, c.stack))
        });
        let first = capture::capture(prog, &opts).and_then(|c| {
            let mut image = c.image;
            let notes = fixups::find(&mut image, &c.stack)?;
            normalize::reset_thread_state(&mut image);
            Ok((image, notes, c.warnings, c.stack))
        });
        (
            first,
            other
                .join()
                .unwrap_or_else(|_| Err(other!("the second capture failed"))),
        )
    });
    let (image, notes, warnings, stack) = first?;
    let (image2, stack2) = second?;
    Ok(Captures {
        image,
        stack,
        notes,
        warnings,
        image2,
        stack2,
        argc_probe,
    })
}

/// The second stage: capture, analyse, write OUTPUT.
pub fn build(o: &Options, p: Prepared) -> Result<Packed> {
    let tunables = env::baked_tunables(&p.env.env);
    let t_capture = Instant::now();
    let c = capture_twice(o, &p)?;
    checks::check_loaded(&c.image, &p.env.includes)?;
    let capture = t_capture.elapsed();
    let (mut image, zeroed, vdso_left) =
        normalise(c.image, c.image2, &c.stack, &c.stack2, c.argc_probe)?;
    image.cpu_needs = p.cpu.needs;
    image.min_kernel = meta::min_kernel(&image.objects);
    image.cpu_level = p.cpu.name.clone();
    let t_symbols = Instant::now();
    let symbols = if o.strip {
        Vec::new()
    } else {
        symbols::collect(&image.objects)
    };
    let symbols_time = t_symbols.elapsed();
    let (stats, write) = write(o, &p, &mut image, &symbols, &tunables)?;
    let mut warnings: Vec<Warning> = c.warnings.into_iter().map(Warning::from_capture).collect();
    if !p.program.secure_list_known {
        warnings.push(Warning::UnknownLoader(p.program.interp.clone()));
    }
    Ok(Packed {
        times: Times {
            capture,
            symbols: symbols_time,
            write,
            total: p.started.elapsed(),
        },
        program: p.program,
        output: o.output.clone(),
        cpu: p.cpu,
        image,
        stats,
        warnings,
        left_as_is: c.notes,
        zeroed,
        vdso_left,
    })
}

/// Zeroes what differs between the two captures (but the auxv copies, which become
/// fixups), and points the vDSO proxy's functions at their slots. Returns the image, the
/// zeroed words and the vDSO functions left as they are.
fn normalise(
    mut image: Image,
    image2: Image,
    stack: &capture::StackInfo,
    stack2: &capture::StackInfo,
    argc_probe: Option<u64>,
) -> Result<(Image, Vec<u64>, Vec<String>)> {
    let aux_values = fixups::aux_values(&image, &image2, stack, stack2);
    let varying = normalize::zero_differences(&mut image, &image2, argc_probe)?;
    drop(image2);
    let varying: Vec<u64> = varying
        .into_iter()
        .filter(|a| !aux_values.iter().any(|f| f.addr == *a))
        .collect();
    image.fixups.extend(aux_values);
    image.fixups.sort_by_key(|f| f.addr);
    let unknown = vdso::find_entries(&mut image)?;
    Ok((image, varying, unknown))
}

/// Writes OUTPUT: into a temporary file beside it, renamed over it once complete. Returns
/// the writer's figures and the time the writing took.
fn write(
    o: &Options,
    p: &Prepared,
    image: &mut Image,
    symbols: &[symbols::ImageSymbol],
    tunables: &[String],
) -> Result<(writer::Stats, Duration)> {
    let t_write = Instant::now();
    let nsyms = symbols.len() as u64;
    // From here to the rename, Ctrl-C and friends wait: an interrupted write would leave
    // the temporary file behind. They are delivered once OUTPUT is complete (or the error
    // is reported, and the temporary file removed).
    let deferred = DeferSignals::new();
    let tmp = output::Pending::create(&p.dir)?;
    let mut stats = writer::write(tmp.file(), image, symbols, |image, st, usage| {
        let mut m = meta::build(
            image,
            &p.program,
            usage,
            st.stub_size,
            st.segments as u64,
            nsyms,
        );
        m.tunables = tunables.to_vec();
        serde_json::to_vec(&m).expect("serialisable")
    })
    .map_err(|e| writer_error(e, &o.output))?;
    stats.file_size =
        sections::make_consistent(tmp.file()).map_err(|e| writer_error(e, &o.output))?;
    let write_time = t_write.elapsed();
    tmp.persist(&o.output, output::executable_mode())?;
    drop(deferred);
    Ok((stats, write_time))
}

/// The writer's errors as elfpack reports them: an image that cannot be laid out is a
/// program that cannot be packed (exit 3); an I/O error names OUTPUT. The writer states
/// both kinds as text: these are its messages.
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
