//! irqdiff's strict test double of Hypervisor.framework
//! ([`irqdiff::backend::hvf::double`]) as a C library with Apple's names:
//! `libhypervisor_framework_double.so` exports the `hv_*` functions of
//! `include/Hypervisor/Hypervisor.h` (generated from the same tables as the
//! Rust FFI, `hypervisor-framework-sys`), so a C program written for an
//! Intel Mac, such as a generated `irqdiff emit F --as c-hvf` repro, builds
//! and runs unchanged on Linux:
//!
//! ```sh
//! cargo build --release -p hypervisor-framework-double
//! irqdiff emit F.irq --as c-hvf > r.c
//! cc r.c -I hypervisor-framework-double/include -L target/release -lhypervisor_framework_double
//! LD_LIBRARY_PATH=target/release ./a.out                                      # the spec: exit 0
//! IRQDIFF_HVF_DOUBLE_QUIRKS=hvf-known LD_LIBRARY_PATH=target/release ./a.out  # the seed's bugs
//! ```
//!
//! Behind the calls is the strict double: one VM per process (`HV_BUSY`),
//! vCPU calls only from the creating thread, the destroy order, the VM-entry
//! checks of SDM vol. 3C 26.2/26.3 against a Kaby Lake Mac's capability MSRs,
//! a halted vCPU that blocks until `hv_vcpu_interrupt`, host-interrupt exits
//! at random, and an in-kernel irqchip that is irqdiff's model.
//!
//! Environment (read by `hv_vm_create`):
//! - `IRQDIFF_HVF_DOUBLE_QUIRKS`: in-kernel bugs to inject, as for the `sim:`
//!   backends (`hvf-known`, `none`, or a list such as
//!   `level-unmask-no-deliver,split-eoi-lost`). Unset: none, the spec.
//! - `IRQDIFF_HVF_DOUBLE_IOAPIC`: the in-kernel IOAPIC's identity, `0x11`
//!   (bhyve's: 32 pins, no EOI register; the default) or `0x20` (ICH: 24
//!   pins, the EOI register).
//!
//! What the double does not model answers `HV_UNSUPPORTED`: more than one
//! memory mapping (the guest RAM must be one `hv_vm_map` at guest-physical
//! 0, before `hv_vcpu_create`), `hv_vm_unmap`, `hv_vm_protect`, native MSRs,
//! the irqchip state get/put calls, `hv_vm_lapic_set_intr`, and the ATPIC
//! lines and port reads. A VM needs `HV_VM_ACCEL_APIC`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hypervisor_framework_sys::{self as hv, hv_return_t};
use irqdiff::backend::hvf::api::{Hv, HvExt, HvResult, Interrupter};
use irqdiff::backend::hvf::double::{Double, IoapicIdentity, Process, StrictConfig};
use irqdiff::model::Quirks;

/// The environment variable naming the in-kernel bugs to inject.
pub const QUIRKS_VAR: &str = "IRQDIFF_HVF_DOUBLE_QUIRKS";
/// The environment variable choosing the in-kernel IOAPIC's identity.
pub const IOAPIC_VAR: &str = "IRQDIFF_HVF_DOUBLE_IOAPIC";

/// The process's VM: the double, once `hv_vm_create` made it (it is
/// brought to life by the one `hv_vm_map` of the guest RAM).
struct Vm {
    double: Double,
    mapped: bool,
}

static VM: Mutex<Option<Vm>> = Mutex::new(None);
/// `hv_vcpu_interrupt` for each vCPU, by ID, kept apart from [`VM`]: a
/// watchdog thread calls it while the vCPU's thread blocks in
/// `hv_vcpu_run_until` holding the VM.
static KICKS: Mutex<Vec<Option<Interrupter>>> = Mutex::new(Vec::new());
/// The process Hypervisor.framework scopes its one VM to.
static PROCESS: Mutex<Option<Process>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs an export's body; a panic becomes `HV_ERROR` (it must not unwind
/// into C).
fn ffi(body: impl FnOnce() -> hv_return_t) -> hv_return_t {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(hv::HV_ERROR)
}

fn code(result: HvResult<()>) -> hv_return_t {
    match result {
        Ok(()) => hv::HV_SUCCESS,
        Err(e) => e.code,
    }
}

/// Calls `f` on the mapped VM's double; `HV_ERROR` when there is none.
fn with_double(f: impl FnOnce(&mut Double) -> HvResult<()>) -> hv_return_t {
    match lock(&VM).as_mut() {
        Some(vm) if vm.mapped => code(f(&mut vm.double)),
        _ => hv::HV_ERROR,
    }
}

/// Like [`with_double`], storing the value through the out-pointer `out`.
///
/// # Safety
///
/// `out` is null or valid for a write of `T`.
unsafe fn read_into<T>(out: *mut T, f: impl FnOnce(&mut Double) -> HvResult<T>) -> hv_return_t {
    if out.is_null() {
        return hv::HV_BAD_ARGUMENT;
    }
    with_double(|d| {
        let value = f(d)?;
        // SAFETY: `out` is non-null and, by the caller's contract, writable.
        unsafe { out.write(value) };
        Ok(())
    })
}

/// The double's settings from the environment.
fn config(process: &Process) -> Result<(StrictConfig, Quirks), String> {
    let quirks = match std::env::var(QUIRKS_VAR) {
        Ok(spec) => {
            irqdiff::backend::sim::parse_quirks(&spec).map_err(|e| format!("{QUIRKS_VAR}: {e}"))?
        }
        Err(_) => Quirks::empty(),
    };
    let ioapic = match std::env::var(IOAPIC_VAR).as_deref() {
        Err(_) | Ok("0x11") => IoapicIdentity::BHYVE,
        Ok("0x20") => IoapicIdentity::ICH,
        Ok(other) => return Err(format!("{IOAPIC_VAR}: `{other}` is not 0x11 or 0x20")),
    };
    Ok((
        StrictConfig {
            ioapic,
            ..StrictConfig::new(process)
        },
        quirks,
    ))
}

// ---- VM (hv.h) ----

/// `hv_vm_create`: the process's one VM (a second answers `HV_BUSY`).
#[no_mangle]
pub extern "C" fn hv_vm_create(flags: hv::hv_vm_options_t) -> hv_return_t {
    ffi(|| {
        if flags != hv::HV_VM_ACCEL_APIC {
            eprintln!(
                "libhypervisor_framework_double: hv_vm_create: only HV_VM_ACCEL_APIC is modelled"
            );
            return hv::HV_UNSUPPORTED;
        }
        let mut vm = lock(&VM);
        if vm.is_some() {
            // Apple: one VM per process (the double's rule, checked here
            // because the double is made at the mapping).
            return hv::HV_BUSY;
        }
        let process = lock(&PROCESS).get_or_insert_with(Process::new).clone();
        match config(&process) {
            Ok((config, quirks)) => {
                *vm = Some(Vm {
                    double: Double::strict(config, quirks),
                    mapped: false,
                });
                hv::HV_SUCCESS
            }
            Err(why) => {
                eprintln!("libhypervisor_framework_double: {why}");
                hv::HV_BAD_ARGUMENT
            }
        }
    })
}

/// `hv_vm_destroy`: refused (`HV_BUSY`) while a vCPU lives.
#[no_mangle]
pub extern "C" fn hv_vm_destroy() -> hv_return_t {
    ffi(|| {
        let mut vm = lock(&VM);
        let Some(current) = vm.as_mut() else {
            return hv::HV_ERROR;
        };
        if current.mapped {
            let r = code(current.double.destroy_vm());
            if r != hv::HV_SUCCESS {
                return r;
            }
        }
        *vm = None;
        hv::HV_SUCCESS
    })
}

/// `hv_vm_map`: the guest RAM, once, at guest-physical 0, read/write/execute.
///
/// # Safety
///
/// `uva` points to `size` bytes of page-aligned memory that outlive the VM.
#[no_mangle]
pub unsafe extern "C" fn hv_vm_map(
    uva: hv::hv_uvaddr_t,
    gpa: hv::hv_gpaddr_t,
    size: usize,
    flags: hv::hv_memory_flags_t,
) -> hv_return_t {
    ffi(|| {
        let rwx = hv::HV_MEMORY_READ | hv::HV_MEMORY_WRITE | hv::HV_MEMORY_EXEC;
        if uva.is_null() || uva as usize % 4096 != 0 || size % 4096 != 0 {
            return hv::HV_BAD_ARGUMENT;
        }
        let mut vm = lock(&VM);
        let Some(current) = vm.as_mut() else {
            return hv::HV_ERROR;
        };
        if current.mapped || gpa != 0 || flags != rwx || size < irqdiff::guest::layout::RAM_SIZE {
            eprintln!("libhypervisor_framework_double: hv_vm_map: the double models one read/write/execute mapping of the guest RAM at 0");
            return hv::HV_UNSUPPORTED;
        }
        let r = code(current.double.create_vm(uva.cast_mut().cast(), size));
        current.mapped = r == hv::HV_SUCCESS;
        r
    })
}

/// `hv_vm_unmap`: not modelled.
#[no_mangle]
pub extern "C" fn hv_vm_unmap(_gpa: hv::hv_gpaddr_t, _size: usize) -> hv_return_t {
    hv::HV_UNSUPPORTED
}

/// `hv_vm_protect`: not modelled.
#[no_mangle]
pub extern "C" fn hv_vm_protect(
    _gpa: hv::hv_gpaddr_t,
    _size: usize,
    _flags: hv::hv_memory_flags_t,
) -> hv_return_t {
    hv::HV_UNSUPPORTED
}

// ---- vCPU (hv.h, hv_vmx.h) ----

/// `hv_vcpu_create`: the vCPU belongs to the calling thread.
///
/// # Safety
///
/// `vcpu` is null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn hv_vcpu_create(
    vcpu: *mut hv::hv_vcpuid_t,
    _flags: hv::hv_vcpu_options_t,
) -> hv_return_t {
    ffi(|| {
        // SAFETY: the caller's contract on `vcpu`.
        unsafe {
            read_into(vcpu, |d| {
                let id = d.create_vcpu()?;
                let kick = d.interrupter(id)?;
                let mut kicks = lock(&KICKS);
                if kicks.len() <= id as usize {
                    kicks.resize(id as usize + 1, None);
                }
                kicks[id as usize] = Some(kick);
                Ok(id)
            })
        }
    })
}

/// `hv_vcpu_destroy` (owning thread only).
#[no_mangle]
pub extern "C" fn hv_vcpu_destroy(vcpu: hv::hv_vcpuid_t) -> hv_return_t {
    ffi(|| {
        with_double(|d| {
            d.destroy_vcpu(vcpu)?;
            if let Some(kick) = lock(&KICKS).get_mut(vcpu as usize) {
                *kick = None;
            }
            Ok(())
        })
    })
}

/// `hv_vcpu_interrupt`: from any thread; ends a blocked `hv_vcpu_run_until`.
///
/// # Safety
///
/// `vcpus` points to `vcpu_count` vCPU ids.
#[no_mangle]
pub unsafe extern "C" fn hv_vcpu_interrupt(
    vcpus: *mut hv::hv_vcpuid_t,
    vcpu_count: u32,
) -> hv_return_t {
    ffi(|| {
        if vcpus.is_null() {
            return hv::HV_BAD_ARGUMENT;
        }
        // SAFETY: the caller's contract.
        let ids = unsafe { std::slice::from_raw_parts(vcpus, vcpu_count as usize) };
        let kicks = lock(&KICKS).clone();
        for &id in ids {
            match kicks.get(id as usize) {
                Some(Some(kick)) => {
                    let r = code(kick());
                    if r != hv::HV_SUCCESS {
                        return r;
                    }
                }
                _ => return hv::HV_BAD_ARGUMENT,
            }
        }
        hv::HV_SUCCESS
    })
}

/// `hv_vcpu_read_register`.
///
/// # Safety
///
/// `value` is null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn hv_vcpu_read_register(
    vcpu: hv::hv_vcpuid_t,
    reg: hv::hv_x86_reg_t,
    value: *mut u64,
) -> hv_return_t {
    // SAFETY: the caller's contract on `value`.
    ffi(|| unsafe { read_into(value, |d| d.read_register(vcpu, reg)) })
}

/// `hv_vcpu_write_register`.
#[no_mangle]
pub extern "C" fn hv_vcpu_write_register(
    vcpu: hv::hv_vcpuid_t,
    reg: hv::hv_x86_reg_t,
    value: u64,
) -> hv_return_t {
    ffi(|| with_double(|d| d.write_register(vcpu, reg, value)))
}

/// `hv_vcpu_read_msr` (the double knows IA32_APIC_BASE).
///
/// # Safety
///
/// `value` is null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn hv_vcpu_read_msr(
    vcpu: hv::hv_vcpuid_t,
    msr: u32,
    value: *mut u64,
) -> hv_return_t {
    // SAFETY: the caller's contract on `value`.
    ffi(|| unsafe { read_into(value, |d| d.read_msr(vcpu, msr)) })
}

/// `hv_vcpu_write_msr` (the strict double refuses IA32_APIC_BASE).
#[no_mangle]
pub extern "C" fn hv_vcpu_write_msr(vcpu: hv::hv_vcpuid_t, msr: u32, value: u64) -> hv_return_t {
    ffi(|| with_double(|d| d.write_msr(vcpu, msr, value)))
}

/// `hv_vcpu_enable_native_msr`: not modelled.
#[no_mangle]
pub extern "C" fn hv_vcpu_enable_native_msr(
    _vcpu: hv::hv_vcpuid_t,
    _msr: u32,
    _enable: bool,
) -> hv_return_t {
    hv::HV_UNSUPPORTED
}

/// `hv_vcpu_run`: until the next exit.
#[no_mangle]
pub extern "C" fn hv_vcpu_run(vcpu: hv::hv_vcpuid_t) -> hv_return_t {
    ffi(|| with_double(|d| d.run_forever(vcpu).map(drop)))
}

/// `hv_vcpu_run_until`. The double takes no time to run the guest, so a
/// deadline never passes before the next exit; a blocked HLT ignores it
/// (the strict double's assumption) until `hv_vcpu_interrupt`.
#[no_mangle]
pub extern "C" fn hv_vcpu_run_until(vcpu: hv::hv_vcpuid_t, deadline: u64) -> hv_return_t {
    ffi(|| {
        with_double(|d| {
            if deadline == hv::HV_DEADLINE_FOREVER {
                d.run_forever(vcpu).map(drop)
            } else {
                d.run_until(vcpu, Duration::from_millis(3)).map(drop)
            }
        })
    })
}

/// `hv_vmx_vcpu_read_vmcs`.
///
/// # Safety
///
/// `value` is null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn hv_vmx_vcpu_read_vmcs(
    vcpu: hv::hv_vcpuid_t,
    field: u32,
    value: *mut u64,
) -> hv_return_t {
    // SAFETY: the caller's contract on `value`.
    ffi(|| unsafe { read_into(value, |d| d.read_vmcs(vcpu, field)) })
}

/// `hv_vmx_vcpu_write_vmcs`.
#[no_mangle]
pub extern "C" fn hv_vmx_vcpu_write_vmcs(
    vcpu: hv::hv_vcpuid_t,
    field: u32,
    value: u64,
) -> hv_return_t {
    ffi(|| with_double(|d| d.write_vmcs(vcpu, field, value)))
}

/// `hv_vmx_read_capability`: a Kaby Lake Mac's VMX capability MSRs.
///
/// # Safety
///
/// `value` is null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn hv_vmx_read_capability(field: u32, value: *mut u64) -> hv_return_t {
    // SAFETY: the caller's contract on `value`.
    ffi(|| unsafe { read_into(value, |d| d.read_capability(field)) })
}

/// `hv_vmx_vcpu_set_apic_address`: moves the APIC's MMIO window.
#[no_mangle]
pub extern "C" fn hv_vmx_vcpu_set_apic_address(
    vcpu: hv::hv_vcpuid_t,
    gpa: hv::hv_gpaddr_t,
) -> hv_return_t {
    ffi(|| with_double(|d| d.set_apic_address(vcpu, gpa)))
}

// ---- The in-kernel APIC, IOAPIC and ATPIC (hv.h, macOS 12) ----

/// `hv_vcpu_exit_info`.
///
/// # Safety
///
/// `code` is null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn hv_vcpu_exit_info(
    vcpu: hv::hv_vcpuid_t,
    code: *mut hv::hv_vm_exitinfo_t,
) -> hv_return_t {
    // SAFETY: the caller's contract on `code`.
    ffi(|| unsafe { read_into(code, |d| d.exit_info(vcpu)) })
}

/// `hv_vcpu_exit_ioapic_eoi`.
///
/// # Safety
///
/// `vec` is null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn hv_vcpu_exit_ioapic_eoi(
    vcpu: hv::hv_vcpuid_t,
    vec: *mut u8,
) -> hv_return_t {
    // SAFETY: the caller's contract on `vec`.
    ffi(|| unsafe { read_into(vec, |d| d.exit_ioapic_eoi(vcpu)) })
}

/// `hv_vcpu_exit_init_ap`: the double's answer (`Double::exit_init_ap`:
/// the thread rule, then `HV_ERROR`, as no INIT_AP exit happens on the
/// double yet); a null `is_actv` is `HV_BAD_ARGUMENT`.
///
/// # Safety
///
/// `is_actv` is null or valid for `count` writes.
#[no_mangle]
pub unsafe extern "C" fn hv_vcpu_exit_init_ap(
    vcpu: hv::hv_vcpuid_t,
    is_actv: *mut bool,
    count: u32,
) -> hv_return_t {
    if is_actv.is_null() {
        return hv::HV_BAD_ARGUMENT;
    }
    ffi(|| {
        with_double(|d| {
            let targets = d.exit_init_ap(vcpu, count)?;
            // SAFETY: non-null and, by the caller's contract, valid for
            // `count` writes; at most `count` are written.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    targets.as_ptr(),
                    is_actv,
                    targets.len().min(count as usize),
                )
            };
            Ok(())
        })
    })
}

/// `hv_vcpu_exit_startup_ap`: as `hv_vcpu_exit_init_ap`.
///
/// # Safety
///
/// `is_actv` is null or valid for `count` writes, `ap_rip` null or valid
/// for a write.
#[no_mangle]
pub unsafe extern "C" fn hv_vcpu_exit_startup_ap(
    vcpu: hv::hv_vcpuid_t,
    is_actv: *mut bool,
    count: u32,
    ap_rip: *mut u64,
) -> hv_return_t {
    if is_actv.is_null() || ap_rip.is_null() {
        return hv::HV_BAD_ARGUMENT;
    }
    ffi(|| {
        with_double(|d| {
            let (targets, rip) = d.exit_startup_ap(vcpu, count)?;
            // SAFETY: non-null and, by the caller's contract, valid for
            // `count` writes and one write; at most `count` are written.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    targets.as_ptr(),
                    is_actv,
                    targets.len().min(count as usize),
                );
                ap_rip.write(rip);
            }
            Ok(())
        })
    })
}

/// `hv_vcpu_exit_inject_excp`.
///
/// # Safety
///
/// Each pointer is null (`HV_BAD_ARGUMENT`) or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn hv_vcpu_exit_inject_excp(
    vcpu: hv::hv_vcpuid_t,
    vec: *mut u8,
    valid: *mut bool,
    code: *mut u32,
    restart: *mut bool,
) -> hv_return_t {
    if vec.is_null() || valid.is_null() || code.is_null() || restart.is_null() {
        return hv::HV_BAD_ARGUMENT;
    }
    ffi(|| {
        with_double(|d| {
            let e = d.exit_inject_excp(vcpu)?;
            // SAFETY: non-null and, by the caller's contract, writable.
            unsafe {
                vec.write(e.vector);
                valid.write(e.error_code.is_some());
                code.write(e.error_code.unwrap_or(0));
                restart.write(e.restart);
            }
            Ok(())
        })
    })
}

/// `hv_vcpu_exit_apic_access_read`.
///
/// # Safety
///
/// `value` is null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn hv_vcpu_exit_apic_access_read(
    vcpu: hv::hv_vcpuid_t,
    value: *mut u32,
) -> hv_return_t {
    // SAFETY: the caller's contract on `value`.
    ffi(|| unsafe { read_into(value, |d| d.exit_apic_access_read(vcpu)) })
}

/// `hv_vcpu_apic_read`.
///
/// # Safety
///
/// `data` is null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn hv_vcpu_apic_read(
    vcpu: hv::hv_vcpuid_t,
    offset: u32,
    data: *mut u32,
) -> hv_return_t {
    // SAFETY: the caller's contract on `data`.
    ffi(|| unsafe { read_into(data, |d| d.apic_read(vcpu, offset)) })
}

/// `hv_vcpu_apic_write`.
///
/// # Safety
///
/// `no_side_effect` is null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn hv_vcpu_apic_write(
    vcpu: hv::hv_vcpuid_t,
    offset: u32,
    data: u32,
    no_side_effect: *mut bool,
) -> hv_return_t {
    // SAFETY: the caller's contract on `no_side_effect`.
    ffi(|| unsafe { read_into(no_side_effect, |d| d.apic_write(vcpu, offset, data)) })
}

/// `hv_vcpu_apic_get_state`: not modelled.
#[no_mangle]
pub extern "C" fn hv_vcpu_apic_get_state(
    _vcpu: hv::hv_vcpuid_t,
    _state: *mut hv::hv_apic_state_ext_t,
) -> hv_return_t {
    hv::HV_UNSUPPORTED
}

/// `hv_vcpu_apic_put_state`: not modelled.
#[no_mangle]
pub extern "C" fn hv_vcpu_apic_put_state(
    _vcpu: hv::hv_vcpuid_t,
    _state: *const hv::hv_apic_state_ext_t,
) -> hv_return_t {
    hv::HV_UNSUPPORTED
}

/// `hv_vcpu_apic_ctrl`.
#[no_mangle]
pub extern "C" fn hv_vcpu_apic_ctrl(
    vcpu: hv::hv_vcpuid_t,
    ctrls: hv::hv_apic_ctrl_t,
) -> hv_return_t {
    ffi(|| with_double(|d| d.apic_ctrl(vcpu, ctrls)))
}

/// `hv_vm_lapic_msi` (full address).
#[no_mangle]
pub extern "C" fn hv_vm_lapic_msi(addr: u64, data: u64) -> hv_return_t {
    ffi(|| with_double(|d| d.lapic_msi(addr, data)))
}

/// `hv_vm_lapic_set_intr`: not modelled.
#[no_mangle]
pub extern "C" fn hv_vm_lapic_set_intr(
    _vcpu: hv::hv_vcpuid_t,
    _vector: u8,
    _trig: hv::hv_apic_intr_trigger_t,
) -> hv_return_t {
    hv::HV_UNSUPPORTED
}

/// `hv_vm_send_ioapic_intr` (a redirection-entry value).
#[no_mangle]
pub extern "C" fn hv_vm_send_ioapic_intr(data: u64) -> hv_return_t {
    ffi(|| with_double(|d| d.send_ioapic_intr(data)))
}

/// `hv_vm_ioapic_read` (full guest-physical address).
///
/// # Safety
///
/// `datap` is null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn hv_vm_ioapic_read(gpa: hv::hv_gpaddr_t, datap: *mut u32) -> hv_return_t {
    // SAFETY: the caller's contract on `datap`.
    ffi(|| unsafe { read_into(datap, |d| d.ioapic_read(gpa)) })
}

/// `hv_vm_ioapic_write` (full guest-physical address).
#[no_mangle]
pub extern "C" fn hv_vm_ioapic_write(gpa: hv::hv_gpaddr_t, data: u32) -> hv_return_t {
    ffi(|| with_double(|d| d.ioapic_write(gpa, data)))
}

/// `hv_vm_ioapic_assert_irq`.
#[no_mangle]
pub extern "C" fn hv_vm_ioapic_assert_irq(intin: i32) -> hv_return_t {
    ffi(|| with_double(|d| d.ioapic_assert_irq(intin)))
}

/// `hv_vm_ioapic_deassert_irq`.
#[no_mangle]
pub extern "C" fn hv_vm_ioapic_deassert_irq(intin: i32) -> hv_return_t {
    ffi(|| with_double(|d| d.ioapic_deassert_irq(intin)))
}

/// `hv_vm_ioapic_pulse_irq`.
#[no_mangle]
pub extern "C" fn hv_vm_ioapic_pulse_irq(intin: i32) -> hv_return_t {
    ffi(|| with_double(|d| d.ioapic_pulse_irq(intin)))
}

/// `hv_vm_ioapic_get_state`: not modelled.
#[no_mangle]
pub extern "C" fn hv_vm_ioapic_get_state(_state: *mut hv::hv_ioapic_state_ext_t) -> hv_return_t {
    hv::HV_UNSUPPORTED
}

/// `hv_vm_ioapic_put_state`: not modelled.
#[no_mangle]
pub extern "C" fn hv_vm_ioapic_put_state(_state: *const hv::hv_ioapic_state_ext_t) -> hv_return_t {
    hv::HV_UNSUPPORTED
}

/// `hv_vm_atpic_assert_irq`: not modelled.
#[no_mangle]
pub extern "C" fn hv_vm_atpic_assert_irq(_irq: i32) -> hv_return_t {
    hv::HV_UNSUPPORTED
}

/// `hv_vm_atpic_deassert_irq`: not modelled.
#[no_mangle]
pub extern "C" fn hv_vm_atpic_deassert_irq(_irq: i32) -> hv_return_t {
    hv::HV_UNSUPPORTED
}

/// `hv_vm_atpic_port_read`: not modelled.
#[no_mangle]
pub extern "C" fn hv_vm_atpic_port_read(_port: i32, _valuep: *mut u8) -> hv_return_t {
    hv::HV_UNSUPPORTED
}

/// `hv_vm_atpic_port_write` (the stub masks the 8259s).
#[no_mangle]
pub extern "C" fn hv_vm_atpic_port_write(port: i32, value: u8) -> hv_return_t {
    ffi(|| with_double(|d| d.atpic_port_write(port, value)))
}

/// Every export has the C signature of its row in the sys crate's table
/// (a mismatch does not compile), and every row is exported.
macro_rules! exports {
    ($($name:ident),* $(,)?) => {
        $( const _: hv::signatures::$name = $name; )*
        /// The names this library exports, in the table's order.
        pub const EXPORTS: &[&str] = &[$(stringify!($name)),*];
    };
}

exports!(
    hv_vm_create,
    hv_vm_destroy,
    hv_vm_map,
    hv_vm_unmap,
    hv_vm_protect,
    hv_vcpu_create,
    hv_vcpu_destroy,
    hv_vcpu_read_register,
    hv_vcpu_write_register,
    hv_vcpu_read_msr,
    hv_vcpu_write_msr,
    hv_vcpu_enable_native_msr,
    hv_vcpu_run,
    hv_vcpu_run_until,
    hv_vcpu_interrupt,
    hv_vmx_vcpu_read_vmcs,
    hv_vmx_vcpu_write_vmcs,
    hv_vmx_read_capability,
    hv_vmx_vcpu_set_apic_address,
    hv_vcpu_exit_info,
    hv_vcpu_exit_ioapic_eoi,
    hv_vcpu_exit_init_ap,
    hv_vcpu_exit_startup_ap,
    hv_vcpu_exit_inject_excp,
    hv_vcpu_exit_apic_access_read,
    hv_vcpu_apic_read,
    hv_vcpu_apic_write,
    hv_vcpu_apic_get_state,
    hv_vcpu_apic_put_state,
    hv_vcpu_apic_ctrl,
    hv_vm_lapic_msi,
    hv_vm_lapic_set_intr,
    hv_vm_send_ioapic_intr,
    hv_vm_ioapic_read,
    hv_vm_ioapic_write,
    hv_vm_ioapic_assert_irq,
    hv_vm_ioapic_deassert_irq,
    hv_vm_ioapic_pulse_irq,
    hv_vm_ioapic_get_state,
    hv_vm_ioapic_put_state,
    hv_vm_atpic_assert_irq,
    hv_vm_atpic_deassert_irq,
    hv_vm_atpic_port_read,
    hv_vm_atpic_port_write,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_function_of_the_table_is_exported() {
        let table: Vec<&str> = hv::FUNCTIONS.iter().map(|f| f.name).collect();
        assert_eq!(EXPORTS, table.as_slice());
    }

    /// The framework's rules through the C entry points, in one test since
    /// they share the process's one VM: one VM per process, only
    /// `HV_VM_ACCEL_APIC`, one mapping of the RAM, the owning thread, the
    /// vCPU destroyed before the VM, then a new VM.
    #[test]
    fn the_c_entry_points_keep_the_frameworks_rules() {
        let layout = std::alloc::Layout::from_size_align(irqdiff::guest::layout::RAM_SIZE, 4096)
            .expect("layout");
        // SAFETY: a non-zero size; freed at the end of the test.
        let ram = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ram.is_null());
        let rwx = hv::HV_MEMORY_READ | hv::HV_MEMORY_WRITE | hv::HV_MEMORY_EXEC;
        assert_eq!(hv_vm_create(hv::HV_VM_DEFAULT), hv::HV_UNSUPPORTED);
        assert_eq!(hv_vm_create(hv::HV_VM_ACCEL_APIC), hv::HV_SUCCESS);
        assert_eq!(hv_vm_create(hv::HV_VM_ACCEL_APIC), hv::HV_BUSY);
        let mut vcpu = u32::MAX;
        // SAFETY: `vcpu` is writable. No mapping yet: the double has no VM.
        assert_eq!(unsafe { hv_vcpu_create(&mut vcpu, 0) }, hv::HV_ERROR);
        // SAFETY: `ram` is page-aligned and outlives the VM.
        let map = |gpa| unsafe { hv_vm_map(ram.cast_const().cast(), gpa, layout.size(), rwx) };
        assert_eq!(map(0x1000), hv::HV_UNSUPPORTED);
        assert_eq!(map(0), hv::HV_SUCCESS);
        assert_eq!(map(0), hv::HV_UNSUPPORTED);
        // SAFETY: `vcpu` is writable.
        assert_eq!(unsafe { hv_vcpu_create(&mut vcpu, 0) }, hv::HV_SUCCESS);
        assert_eq!(vcpu, 0);
        // Another thread may kick the vCPU but not use it.
        std::thread::spawn(move || {
            let mut ids = [vcpu];
            // SAFETY: `ids` holds one id.
            let kicked = unsafe { hv_vcpu_interrupt(ids.as_mut_ptr(), 1) };
            assert_eq!(kicked, hv::HV_SUCCESS);
            assert_eq!(
                hv_vcpu_write_register(vcpu, hv::HV_X86_RIP, 0),
                hv::HV_BAD_ARGUMENT
            );
        })
        .join()
        .unwrap();
        let mut wrong = [7];
        // SAFETY: `wrong` holds one id.
        let unknown = unsafe { hv_vcpu_interrupt(wrong.as_mut_ptr(), 1) };
        assert_eq!(unknown, hv::HV_BAD_ARGUMENT);
        // SAFETY: a null list is refused, not read.
        let null_list = unsafe { hv_vcpu_interrupt(std::ptr::null_mut(), 1) };
        assert_eq!(null_list, hv::HV_BAD_ARGUMENT);
        // SAFETY: a null out-pointer is refused, not written.
        let null_out = unsafe { hv_vcpu_read_register(vcpu, hv::HV_X86_RIP, std::ptr::null_mut()) };
        assert_eq!(null_out, hv::HV_BAD_ARGUMENT);
        assert_eq!(hv_vm_destroy(), hv::HV_BUSY);
        assert_eq!(hv_vcpu_destroy(vcpu), hv::HV_SUCCESS);
        assert_eq!(hv_vm_destroy(), hv::HV_SUCCESS);
        assert_eq!(hv_vm_destroy(), hv::HV_ERROR);
        assert_eq!(hv_vm_create(hv::HV_VM_ACCEL_APIC), hv::HV_SUCCESS);
        assert_eq!(hv_vm_destroy(), hv::HV_SUCCESS);
        // SAFETY: allocated above with `layout`; no VM uses it now.
        unsafe { std::alloc::dealloc(ram, layout) };
    }

    #[test]
    fn committed_header_is_current() {
        let committed = include_str!("../include/Hypervisor/Hypervisor.h");
        assert!(
            committed.starts_with(&format!("/* GENERATED FILE: `{}`", hv::HEADER_COMMAND)),
            "include/Hypervisor/Hypervisor.h does not say it is generated and by which command"
        );
        assert!(
            committed == hv::c_declarations(),
            "include/Hypervisor/Hypervisor.h is stale: run `{}`",
            hv::HEADER_COMMAND
        );
    }
}
