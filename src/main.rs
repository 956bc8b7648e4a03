//! The `irqdiff` command line: a thin layer over the library.
fn main() {
    println!("irqdiff");
}
