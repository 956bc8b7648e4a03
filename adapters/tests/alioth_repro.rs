//! Minimal repros of the two bugs irqdiff found in alioth 0.12's IOAPIC,
//! in alioth's own terms (its `IoApic`, `Mmio` and `MsiSender`), for its
//! maintainers (docs/byo-findings.md). Each asserts what alioth does
//! today, with what the 82093AA datasheet says next to it: when alioth is
//! fixed, the assertion fails and the test is flipped.
#![cfg(target_os = "linux")]

use std::sync::{Arc, Mutex};

use alioth::device::ioapic::IoApic;
use alioth::hv::MsiSender;
use alioth::mem::emulated::Mmio;
use irqdiff_adapters::alioth::NoIrqFd;

#[derive(Clone, Debug, Default)]
struct Recorder(Arc<Mutex<Vec<(u64, u32)>>>);

impl MsiSender for Recorder {
    type IrqFd = NoIrqFd;
    fn send(&self, addr: u64, data: u32) -> alioth::hv::Result<()> {
        self.0.lock().unwrap().push((addr, data));
        Ok(())
    }
    fn create_irqfd(&self) -> alioth::hv::Result<NoIrqFd> {
        panic!("not used by the IOAPIC")
    }
}

const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;

#[test]
fn redirection_entries_come_out_of_reset_unmasked() {
    // 82093AA §3.2.4 (IOREDTBL bit 16, Interrupt Mask): the entries reset
    // masked; KVM (kvm_ioapic_reset) and QEMU (ioapic_reset_common) set
    // the mask bit. alioth's RedirectEntry defaults to 0: unmasked, fixed,
    // vector 0, to APIC 0.
    let sent = Recorder::default();
    let ioapic = IoApic::new(sent.clone());
    ioapic.write(IOREGSEL, 4, 0x10).unwrap();
    let low = ioapic.read(IOWIN, 4).unwrap() as u32;
    assert_eq!(low & 1 << 16, 0, "spec: 1 << 16 (masked)");
    // So a pin serviced before the guest programs it sends vector 0, an
    // illegal vector (SDM §11.5.3), instead of nothing.
    ioapic.service_pin(0).unwrap();
    assert_eq!(
        *sent.0.lock().unwrap(),
        vec![(0xfee0_0000, 0)],
        "spec: no message from a masked pin"
    );
}

#[test]
fn delivery_status_and_remote_irr_are_writable() {
    // 82093AA §3.2.4: bit 12 (Delivery Status) and bit 14 (Remote IRR) are
    // read-only. alioth's write_reg stores the whole dword.
    let ioapic = IoApic::new(Recorder::default());
    ioapic.write(IOREGSEL, 4, 0x12).unwrap();
    ioapic
        .write(IOWIN, 4, 1 << 16 | 1 << 14 | 1 << 12 | 0x30)
        .unwrap();
    let low = ioapic.read(IOWIN, 4).unwrap() as u32;
    assert_eq!(low, 1 << 16 | 1 << 14 | 1 << 12 | 0x30, "spec: 0x0001_0030");
}
