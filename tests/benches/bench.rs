//! `cargo bench -p elfpack-tests`: the full benchmark, printed as Markdown.
//! `cargo bench -p elfpack-tests -- aslr`: only its address-randomisation section.
use elfpack_tests::bench::{aslr, run, Config};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let cfg = Config::full();
    if !std::env::args().any(|a| a == "aslr") {
        println!("{}", run(&cfg));
    }
    println!("{}", aslr(&cfg));
}
