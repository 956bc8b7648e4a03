//! `irqdiff backends`.

use std::process::ExitCode;

use crate::backend::{self, Availability};

pub fn main() -> ExitCode {
    let (best, _) = backend::best_available();
    for info in backend::catalogue() {
        let state = match &info.availability {
            Availability::Available => "available".to_string(),
            Availability::Unavailable(why) => format!("unavailable: {why}"),
        };
        let mark = if info.name == best { " (default)" } else { "" };
        println!("{:<20} {:<60} {state}{mark}", info.name, info.description);
    }
    println!(
        "\nQEMU (--qemu PATH or IRQDIFF_QEMU): {}",
        backend::qemu::describe()
    );
    ExitCode::SUCCESS
}
