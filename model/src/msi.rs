//! MSI address/data decoding (Intel SDM vol. 3A §11.11).

use crate::ioapic::{DeliveryMode, InterruptMessage};
use crate::rules::Rule;

/// The address an MSI with destination `dest` is written to.
pub const fn address(dest: u8, logical: bool) -> u64 {
    0xfee0_0000 | ((dest as u64) << 12) | if logical { 1 << 2 } else { 0 }
}

/// MSI data for a vector, delivery mode and trigger (§11.11.2).
pub const fn data(vector: u8, delivery: DeliveryMode, level: bool) -> u32 {
    // Bit 14 (level assert) is set for level-triggered messages, bit 15 the trigger.
    vector as u32 | ((delivery.bits() as u32) << 8) | if level { (1 << 15) | (1 << 14) } else { 0 }
}

/// Why an MSI write is not an interrupt message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsiError {
    /// §11.11.1: bits 31:20 must be 0xFEE.
    NotInterruptRange(u64),
}

/// Decodes an MSI (§11.11.1: address bits 19:12 destination ID, bit 2
/// destination mode; §11.11.2: data bits 7:0 vector, 10:8 delivery mode,
/// 15 trigger mode).
pub fn decode(address: u64, data: u32) -> Result<InterruptMessage, MsiError> {
    if (address >> 20) & 0xfff != 0xfee {
        return Err(MsiError::NotInterruptRange(address));
    }
    Ok(InterruptMessage {
        vector: data as u8,
        delivery: DeliveryMode::from_bits((data >> 8) as u8),
        logical: address & (1 << 2) != 0,
        dest: ((address >> 12) & 0xff) as u32,
        level: data & (1 << 15) != 0,
        rule: Rule::MsiDelivers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_decodes_fields() {
        // §11.11.1 and §11.11.2.
        let m = decode(address(3, true), data(0x41, DeliveryMode::Lowest, true)).unwrap();
        assert_eq!(
            (m.vector, m.dest, m.logical, m.level, m.delivery),
            (0x41, 3, true, true, DeliveryMode::Lowest)
        );
    }

    #[test]
    fn address_and_data_have_the_exact_layout_of_the_sdm() {
        // §11.11.1 (Figure 11-24): 0xFEE in bits 31:20, destination ID in
        // 19:12, destination mode in bit 2. §11.11.2 (Figure 11-25): vector
        // 7:0, delivery mode 10:8, level (assert) 14, trigger mode 15.
        assert_eq!(address(0x12, false), 0xfee1_2000);
        assert_eq!(address(0xff, true), 0xfeef_f004);
        assert_eq!(data(0x41, DeliveryMode::Fixed, false), 0x0041);
        assert_eq!(data(0x41, DeliveryMode::Lowest, false), 0x0141);
        assert_eq!(data(0x00, DeliveryMode::Nmi, true), 0xc400);
    }

    #[test]
    fn decode_takes_each_field_from_its_own_bits_only() {
        // §11.11.1: bits 3 (redirection hint) and 1:0 are not the
        // destination mode; §11.11.2: bit 14 alone is not the trigger mode,
        // and bits 31:16 are reserved.
        let m = decode(0xfeea_b00b, 0xffff_48f3).unwrap();
        assert_eq!(
            (m.vector, m.delivery, m.logical, m.dest, m.level, m.rule),
            (
                0xf3,
                DeliveryMode::Fixed,
                false,
                0xab,
                false,
                Rule::MsiDelivers
            )
        );
        let m = decode(0xfee0_0004, 0x8400).unwrap();
        assert_eq!(
            (m.vector, m.delivery, m.logical, m.dest, m.level),
            (0x00, DeliveryMode::Nmi, true, 0x00, true)
        );
        assert_eq!(decode(0xfeef_f000, 0x30).unwrap().dest, 0xff);
    }

    #[test]
    fn rejects_addresses_outside_0xfee() {
        for bad in [0xfec0_0000, 0xfef0_0000, 0xfe00_0000, 0x0ee0_0000] {
            assert_eq!(decode(bad, 0x30), Err(MsiError::NotInterruptRange(bad)));
        }
    }
}
