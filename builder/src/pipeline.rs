//! `elfpack build`, stage by stage: [`prepare`] (find and inspect PROGRAM, check OUTPUT,
//! choose the CPU level, assemble the capture environment), then [`build`] (capture twice,
//! find the fixups, normalise, write OUTPUT). Neither prints: what they did comes back as
//! values, for [`crate::report`].
use crate::analysis::{self, Analysed};
use crate::descriptor::Target;
use crate::env::{self, CaptureEnv};
use crate::error::{other, Error, Result};
use crate::signals::DeferSignals;
use crate::warning::Warning;
use crate::{capture, checks, cpu, cpu_check, meta, origin, output, program, symbols, writer};
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
    /// `--untested-glibc`.
    pub untested_glibc: bool,
    /// Address-space randomisation (not `--no-aslr`).
    pub aslr: bool,
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
    /// The image as written, with what the stub redoes in it.
    pub analysed: Analysed,
    pub stats: writer::Stats,
    /// Warnings and notes, in the order they arose.
    pub warnings: Vec<Warning>,
    /// The fixup analysis's words that it left as they are, described.
    pub left_as_is: Vec<String>,
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
    if let (Some(name), true) = (program.sanitizer, o.stop_at_entry) {
        return Err(crate::error::unpackable!(
            "{}: is built with {name}, whose runtime would start at capture with --stop-at-entry; pack it without",
            program.path.display()
        ));
    }
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

/// The captures, each with its fixups found and its thread state reset.
struct Captures {
    first: analysis::Prepared,
    /// The second capture, for what varies from run to run.
    second: analysis::Prepared,
    /// For address randomisation: a capture like the first with the program and the
    /// window elsewhere, and how far.
    moved: Option<(analysis::Prepared, capture::Shift)>,
    /// The first capture's argc, when the second got one argument more.
    argc_probe: Option<u64>,
}

/// Whether the output randomises its layout: not with --no-aslr, and not with
/// --stop-at-entry, whose initializers already ran and may have stored pointers mangled
/// with the pointer guard (glibc `PTR_MANGLE`), which no slide can relocate.
pub fn randomises(o: &Options) -> bool {
    o.aslr && !o.stop_at_entry
}

/// Captures PROGRAM two or three times, at once: the second shows which words still vary
/// from run to run. It gets one argument more, which shows where ld.so keeps argc
/// (`_dl_argc`): the stub sets that to each run's own. With --stop-at-entry the
/// initializers ran and may have acted on the arguments, so both captures get the same.
/// With address randomisation, a third runs like the first with the program and the
/// window moved, which shows the words that hold addresses (`crate::relocs`).
/// With `bind_now`, ld.so binds every symbol at capture (LD_BIND_NOW).
fn capture_all(o: &Options, p: &Prepared, bind_now: bool) -> Result<Captures> {
    let mut args = vec![o.program.clone()];
    args.extend(o.args.iter().cloned());
    let mut env = p.env.env.clone();
    if bind_now {
        env.push(("LD_BIND_NOW".into(), "1".into()));
    }
    let opts = capture::Options {
        args,
        env,
        timeout: o.timeout,
        at_entry: o.stop_at_entry,
        skip_code: false,
        comparison: false,
        quiet: false,
        emulate_brk: randomises(o),
        shift: capture::Shift::default(),
    };
    let argc_probe = (!o.stop_at_entry).then_some(opts.args.len() as u64);
    let mut second_args = opts.args.clone();
    if argc_probe.is_some() {
        second_args.push(OsString::from("elfpack-argc-probe"));
    }
    let prog = &p.program;
    let steer = &prog.arch.spec().steer;
    let shift = capture::Shift {
        program: if prog.pie { steer.probe_shift.0 } else { 0 },
        window: steer.probe_shift.1,
    };
    let (first, second, moved) = std::thread::scope(|s| {
        let moved = randomises(o).then(|| {
            s.spawn(|| {
                let c = capture::capture(
                    prog,
                    &capture::Options {
                        quiet: true,
                        shift,
                        ..opts.clone()
                    },
                )?;
                analysis::prepare(c)
            })
        });
        let other = s.spawn(|| {
            let c = capture::capture(
                prog,
                &capture::Options {
                    skip_code: true,
                    comparison: true,
                    // ld.so's messages are shown once, from the first capture.
                    quiet: true,
                    args: second_args,
                    ..opts.clone()
                },
            )?;
            analysis::prepare(c)
        });
        let first = capture::capture(prog, &opts).and_then(analysis::prepare);
        (
            first,
            other
                .join()
                .unwrap_or_else(|_| Err(other!("the second capture failed"))),
            moved.map(|m| {
                m.join()
                    .unwrap_or_else(|_| Err(other!("the third capture failed")))
            }),
        )
    });
    Ok(Captures {
        first: first?,
        second: second?,
        moved: moved.transpose()?.map(|m| (m, shift)),
        argc_probe,
    })
}

/// The second stage: capture, analyse, write OUTPUT.
pub fn build(o: &Options, p: Prepared) -> Result<Packed> {
    let tunables = env::baked_tunables(&p.env.env);
    let t_capture = Instant::now();
    let (analysed, notes, mut warnings) = analyse(o, &p)?;
    let capture = t_capture.elapsed();
    let target = Target {
        cpu_needs: p.cpu.needs,
        min_kernel: meta::min_kernel(&analysed.image.objects),
        cpu_level: p.cpu.name.clone(),
    };
    let t_symbols = Instant::now();
    let symbols = if o.strip {
        Vec::new()
    } else {
        symbols::collect(&analysed.image.objects)
    };
    let symbols_time = t_symbols.elapsed();
    let (stats, write) = write(o, &p, &analysed, &target, &symbols, &tunables)?;
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
        analysed,
        stats,
        warnings,
        left_as_is: notes,
    })
}

/// Captures and analyses, then checks the CPU level (crate::cpu_check) and makes `$ORIGIN`
/// follow the packed file (crate::origin). Binding stays lazy unless ld.so's lazy-binding
/// resolver needs more than the level: then the captures are made again with every symbol
/// bound. Returns the analysis, the fixup analysis's notes and the warnings.
fn analyse(o: &Options, p: &Prepared) -> Result<(Analysed, Vec<String>, Vec<Warning>)> {
    let mut warnings = Vec::new();
    let mut bind_now = false;
    let (analysed, notes, capture_warnings) = loop {
        let c = capture_all(o, p, bind_now)?;
        checks::check_loaded(&c.first.image, &p.env.includes)?;
        checks::check_sanitizers(&c.first.image, &p.program)?;
        let glibc = checks::check_glibc(&c.first.image, o.untested_glibc)?;
        let (notes, capture_warnings) = (c.first.notes.clone(), c.first.warnings.clone());
        let analysed = analysis::combine(c.first, c.second, c.moved, c.argc_probe)?;
        warnings.extend(glibc.filter(|_| !bind_now));
        let Some(allowed) = p.cpu.allowed else {
            break (analysed, notes, capture_warnings);
        };
        let excesses = cpu_check::excesses(&analysed.image, allowed);
        if !bind_now && !excesses.is_empty() && excesses.iter().all(|e| e.lazy_resolver) {
            let why = format!("{}, above the CPU level {}", excesses[0], p.cpu.name);
            warnings.push(Warning::BoundAtCapture(why));
            bind_now = true;
            continue;
        }
        cpu_check::verify(&analysed.image, &p.cpu.name, allowed)?;
        break (analysed, notes, capture_warnings);
    };
    let mut all = capture_warnings;
    all.append(&mut warnings);
    let (image, origin_warnings, reset) = origin::follow(analysed.image, &p.program.path);
    all.extend(origin_warnings);
    let mut aslr = analysed.aslr;
    if let Some(a) = aslr.as_mut() {
        a.forget(&reset);
        if p.program.pie && !a.program_moves {
            all.push(Warning::ProgramStays);
        }
    }
    Ok((
        Analysed {
            image,
            aslr,
            ..analysed
        },
        notes,
        all,
    ))
}

/// Writes OUTPUT: into a temporary file beside it, renamed over it once complete. Returns
/// the writer's figures and the time the writing took.
fn write(
    o: &Options,
    p: &Prepared,
    analysed: &Analysed,
    target: &Target,
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
    let stats = writer::write(tmp.file(), analysed, target, symbols, |image, st, usage| {
        let mut m = meta::build(
            image,
            target,
            &p.program,
            usage,
            st.stub_size,
            st.segments as u64,
            nsyms,
        );
        m.tunables = tunables.to_vec();
        m.aslr = meta::AslrInfo::of(analysed.aslr.as_ref());
        serde_json::to_vec(&m).expect("serialisable")
    })
    .map_err(|e| writer_error(e, &o.output))?;
    let write_time = t_write.elapsed();
    tmp.persist(&o.output, output::executable_mode())?;
    drop(deferred);
    Ok((stats, write_time))
}

/// The writer's errors as elfpack reports them: an I/O error names OUTPUT.
fn writer_error(e: Error, output: &Path) -> Error {
    match e {
        Error::Write(e) => other!("{}: {}", output.display(), program::io_reason(&e)),
        e => e,
    }
}
