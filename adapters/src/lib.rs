//! Published userspace IOAPICs as irqdiff devices under test
//! ([`irqdiff_model::IoapicDevice`]), so that irqdiff can fuzz them in
//! process (`irqdiff fuzz --backend alioth-ioapic`, `v86-ioapic`), in the
//! split shape on KVM (`kvm-split:alioth-ioapic`), and from a `#[test]`
//! (`irqdiff_check::check_ioapic`); and v86's local APIC behind
//! [`irqdiff_model::LapicDevice`] (`irqdiff_check::check_lapic`).
//! docs/byo-irqchip.md.
//!
//! v86's 8259A pair too, behind [`irqdiff_model::PicDevice`]
//! ([`v86_pic::V86Pic`], for `irqdiff_check::check_pic`; docs/pic.md).

#[cfg(target_os = "linux")]
pub mod alioth;
#[cfg(target_os = "linux")]
pub mod v86;
#[cfg(target_os = "linux")]
pub mod v86_apic;
#[cfg(target_os = "linux")]
pub mod v86_pic;

use irqdiff_model::{IoapicDevice, MessageQueue};

/// A device maker: the sink in, the device out.
pub type Maker = fn(MessageQueue) -> Box<dyn IoapicDevice>;

/// The adapters this build has, by the name the backends take.
pub fn devices() -> &'static [(&'static str, &'static str, Maker)] {
    #[cfg(target_os = "linux")]
    {
        &[
            (
                "alioth-ioapic",
                "alioth 0.12's IoApic (alioth::device::ioapic) behind its MsiSender",
                |sink| Box::new(alioth::AliothIoapic::new(sink)),
            ),
            (
                "v86-ioapic",
                "native-v86-core 0.1.6's IOAPIC (cpu::ioapic), its messages read from v86's APIC",
                |sink| Box::new(v86::V86Ioapic::new(sink)),
            ),
        ]
    }
    #[cfg(not(target_os = "linux"))]
    {
        &[]
    }
}

/// The maker of the adapter named `name`.
pub fn device(name: &str) -> Option<Maker> {
    devices().iter().find(|d| d.0 == name).map(|d| d.2)
}
