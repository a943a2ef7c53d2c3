//! `cargo bench -p elfpack-tests`: the full benchmark, printed as Markdown.
fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!(
        "{}",
        elfpack_tests::bench::run(&elfpack_tests::bench::Config::full())
    );
}
