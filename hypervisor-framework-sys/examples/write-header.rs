//! Regenerates `include/hv_decls.h` from the declarations.
fn main() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/include/hv_decls.h");
    std::fs::write(path, hypervisor_framework_sys::c_declarations()).expect("writable include/");
    println!("wrote {path}");
}
