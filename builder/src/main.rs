//! The `elfpack` command: parses the command line ([`elfpack::cli`]), runs the subcommand
//! and turns its error into one line on stderr and an exit status.
use elfpack::cli::{self, Command};
use elfpack::error::Result;
use elfpack::{inspect, pipeline, report::Report};

fn main() {
    let result = match cli::parse().command {
        Command::Build(a) => build(&a),
        Command::Inspect { file, json } => inspect::run(&file, json),
        Command::Completions { shell } => cli::completions(shell),
        Command::Man => cli::man(),
    };
    if let Err(e) = result {
        eprintln!("elfpack: {e}");
        std::process::exit(e.exit_code());
    }
}

/// `elfpack build`: what is worth saying before the capture is said at once (it takes a
/// while); the rest once OUTPUT is written.
fn build(a: &cli::BuildArgs) -> Result<()> {
    let (options, verbosity) = a.options();
    let report = Report::new(verbosity);
    let prepared = pipeline::prepare(&options)?;
    report.before_capture(&prepared.warnings);
    let packed = pipeline::build(&options, prepared)?;
    report.packed(&packed);
    Ok(())
}
