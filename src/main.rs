//! The `irqdiff` command line; everything it does lives in the library.
fn main() -> std::process::ExitCode {
    irqdiff::cli::main()
}
