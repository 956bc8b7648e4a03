//! The guest stub shared by the real backends: its memory layout, the op
//! table it interprets, its code, and the event log it writes.
//!
//! The stub is hypervisor-independent: a backend loads [`Image`] into guest
//! RAM, writes a scenario's [`table::Table`], enters at [`stub::Stub::entry`]
//! in 64-bit mode with the segments of [`layout`], performs host ops when the
//! stub signals them, and decodes the log with [`log::decode`].
//! See docs/guest-stub.md.

pub mod layout;
pub mod log;
pub mod stub;
pub mod table;

use layout::*;

/// Everything of guest memory that does not depend on the scenario.
#[derive(Clone, Debug)]
pub struct Image {
    pub stub: stub::Stub,
}

/// Points IDT entry `vector` in `ram` at `handler`: a 64-bit interrupt gate
/// (type 0xE, present, DPL 0), so IF is cleared on entry (SDM §6.12.1.3).
pub fn set_gate(ram: &mut [u8], vector: u8, handler: u64) {
    let mut gate = [0u8; 16];
    gate[0..2].copy_from_slice(&(handler as u16).to_le_bytes());
    gate[2..4].copy_from_slice(&CODE_SELECTOR.to_le_bytes());
    gate[5] = 0x8e;
    gate[6..8].copy_from_slice(&((handler >> 16) as u16).to_le_bytes());
    gate[8..12].copy_from_slice(&((handler >> 32) as u32).to_le_bytes());
    let at = (IDT + 16 * vector as u64) as usize;
    ram[at..at + 16].copy_from_slice(&gate);
}

impl Image {
    /// Assembles the stub.
    pub fn build() -> Image {
        Image {
            stub: stub::assemble().expect("the stub's assembly is fixed and valid"),
        }
    }

    /// Writes GDT, IDT, page tables and code into `ram` (guest physical 0).
    pub fn install(&self, ram: &mut [u8]) {
        let put = |ram: &mut [u8], at: u64, bytes: &[u8]| {
            ram[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
        };
        // GDT: null, 64-bit code (L=1), data.
        let gdt: [u64; 3] = [0, 0x00af_9a00_0000_ffff, 0x00cf_9200_0000_ffff];
        for (i, d) in gdt.iter().enumerate() {
            put(ram, GDT + 8 * i as u64, &d.to_le_bytes());
        }
        // IDT: one interrupt gate per vector.
        for (v, &handler) in self.stub.vectors.iter().enumerate() {
            set_gate(ram, v as u8, handler);
        }
        // Page tables: identity map 0-4 GiB with 2 MiB pages; the APIC pages
        // uncached (PCD|PWT).
        put(ram, PML4, &(PDPT | 0x3).to_le_bytes());
        for i in 0..4u64 {
            put(ram, PDPT + 8 * i, &((PD + 0x1000 * i) | 0x3).to_le_bytes());
        }
        for i in 0..2048u64 {
            let addr = i << 21;
            let mut entry = addr | 0x83;
            if addr == IOAPIC_BASE & !0x1f_ffff || addr == LAPIC_BASE & !0x1f_ffff {
                entry |= 0x18;
            }
            put(ram, PD + 8 * i, &entry.to_le_bytes());
        }
        put(ram, CODE, &self.stub.code);
    }

    /// Writes a scenario's table and resets the stub's variables.
    pub fn load(&self, ram: &mut [u8], table: &table::Table, x2apic: bool) {
        let put = |ram: &mut [u8], at: u64, bytes: &[u8]| {
            ram[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
        };
        put(ram, CUR_OP, &0u32.to_le_bytes());
        put(ram, DELIVERIES, &0u32.to_le_bytes());
        put(ram, END_PORT_VAR, &(END_PORT as u32).to_le_bytes());
        put(ram, END_HANDLER, &0u64.to_le_bytes());
        put(ram, X2APIC, &u32::from(x2apic).to_le_bytes());
        put(ram, LOG_PTR, &LOG.to_le_bytes());
        ram[COUNTS as usize..COUNTS as usize + 1024].fill(0);
        put(ram, BODY_DIR, &table.body_dir);
        put(ram, NTH_TABLE, &table.nth);
        put(ram, OPS, &table.ops);
    }

    /// The current top-level op index and the log written so far.
    pub fn read_back<'r>(&self, ram: &'r [u8]) -> (usize, &'r [u8]) {
        let cur = u32::from_le_bytes(
            ram[CUR_OP as usize..CUR_OP as usize + 4]
                .try_into()
                .expect("4 bytes"),
        );
        let ptr = u64::from_le_bytes(
            ram[LOG_PTR as usize..LOG_PTR as usize + 8]
                .try_into()
                .expect("8 bytes"),
        );
        let end = ptr.clamp(LOG, LOG_END) as usize;
        (cur as usize, &ram[LOG as usize..end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stub_assembles_with_every_vector_entry_in_the_code_area() {
        let image = Image::build();
        assert_eq!(image.stub.vectors.len(), 256);
        assert!(image
            .stub
            .vectors
            .iter()
            .all(|&v| (CODE..CODE_END).contains(&v)));
        assert!((CODE..CODE_END).contains(&image.stub.entry));
    }

    #[test]
    fn log_round_trip_of_a_delivery_and_a_read() {
        let mut bytes = Vec::new();
        for w in [
            stub::record::DELIVER,
            3,
            0x76,
            0,
            stub::record::IOAPIC_READ,
            4,
            1,
            0x170011,
        ] {
            bytes.extend_from_slice(&u32::to_le_bytes(w));
        }
        let events = log::decode(&bytes).unwrap();
        assert_eq!(
            events[0].kind,
            crate::trace::EventKind::Deliver { vector: 0x76 }
        );
        assert_eq!(events[1].op, 4);
    }
}
