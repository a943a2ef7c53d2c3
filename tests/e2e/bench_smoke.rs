//! A cheap run of the benchmark (a few runs, no targets), so that it cannot rot. Of the
//! Debian roots it uses only the glibc 2.31 i386 one.
#[test]
fn benchmark_smoke() {
    let report = elfpack_tests::bench::run(&elfpack_tests::bench::Config::smoke());
    for section in [
        "Start-up",
        "Start-up per glibc",
        "`bullseye-i386` root | 2.31 | i386 | sqlite3",
        "Packing time",
        "Size",
        "Memory",
        "Run-time overhead",
        "CPU level",
        "Restore work",
    ] {
        assert!(
            report.contains(section),
            "report lacks {section}:\n{report}"
        );
    }
    assert!(
        !report.contains("NaN") && !report.contains("inf"),
        "{report}"
    );
}
