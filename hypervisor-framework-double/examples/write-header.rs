//! Regenerates `include/Hypervisor/Hypervisor.h` from the tables of
//! hypervisor-framework-sys (`cargo run -p hypervisor-framework-double
//! --example write-header`).
fn main() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/include/Hypervisor/Hypervisor.h"
    );
    std::fs::write(path, hypervisor_framework_sys::c_declarations())
        .expect("include/Hypervisor/ is writable");
    println!("wrote {path}");
}
