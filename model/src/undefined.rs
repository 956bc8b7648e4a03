//! What the 82093AA leaves undefined in the IOAPIC state a guest reads
//! back, decided once for every comparison with the model: irqdiff's
//! campaign oracle (`src/oracle.rs`) and the `irqdiff-check` harness both
//! call these, so a device passes or fails the same way in a campaign and
//! in a VMM's own `cargo test` (docs/byo-findings.md, M1 and M2).

use crate::ioapic::{bits, PINS, REG_REDTBL};

/// Bits of a redirection entry's low dword a read compares: 16:0. Bits
/// 31:17 are reserved (82093AA §3.2.4, bits 55:17), and what a reserved bit
/// reads back is not specified: the model keeps what was written, as KVM
/// does; v86 reads 0 (M2).
pub const ENTRY_LOW_DEFINED: u32 = 0x0001_ffff;
/// Bits of an entry's high dword a read compares: 63:56, the destination.
pub const ENTRY_HIGH_DEFINED: u32 = 0xff00_0000;

/// Whether remote IRR (bit 14) of an entry whose low dword is `low` has a
/// defined value: only for a level-triggered entry. 82093AA §3.2.4 bit 14:
/// "undefined for edge triggered interrupts" (M1: the model clears it on a
/// retype to edge as KVM and QEMU do; v86 keeps it).
pub fn remote_irr_defined(low: u32) -> bool {
    low as u64 & bits::LEVEL != 0
}

/// The part of `value`, read from IOAPIC register `index`, that the spec
/// defines: an entry's reserved bits and an edge entry's remote IRR are
/// cleared; any other register is compared whole.
pub fn defined_bits_of_read(index: u8, value: u32) -> u32 {
    let Some(offset) = index.checked_sub(REG_REDTBL) else {
        return value;
    };
    if offset as usize >= 2 * PINS {
        return value;
    }
    if offset % 2 == 1 {
        return value & ENTRY_HIGH_DEFINED;
    }
    let mut defined = value & ENTRY_LOW_DEFINED;
    if !remote_irr_defined(value) {
        defined &= !(bits::REMOTE_IRR as u32);
    }
    defined
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_bits_and_an_edge_entrys_remote_irr_are_not_compared() {
        // 82093AA §3.2.4: bits 55:17 reserved; bit 14 undefined for edge.
        assert_eq!(defined_bits_of_read(0x10, 0xfffe_0030), 0x30);
        assert_eq!(defined_bits_of_read(0x11, 0x12ff_ffff), 0x1200_0000);
        assert_eq!(defined_bits_of_read(0x3f, 0x0000_0001), 0);
        // Edge: remote IRR dropped, delivery status (bit 12) kept.
        assert_eq!(defined_bits_of_read(0x12, 0x5030), 0x1030);
        // Level: both kept.
        assert_eq!(defined_bits_of_read(0x12, 0xd030), 0xd030);
        // Other registers whole, including undefined indices.
        assert_eq!(defined_bits_of_read(0x01, 0x0017_0020), 0x0017_0020);
        assert_eq!(defined_bits_of_read(0x40, 0xffff_ffff), 0xffff_ffff);
        assert_eq!(defined_bits_of_read(0x0f, 0xffff_ffff), 0xffff_ffff);
        assert!(remote_irr_defined(1 << 15) && !remote_irr_defined(1 << 14));
    }
}
