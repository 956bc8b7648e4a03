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

/// Sets the guest TSC rate `timer-wait` counts its bound in
/// ([`TSC_PER_US`]: TSC cycles per µs, at least 1).
pub fn set_tsc_per_us(ram: &mut [u8], cycles: u32) {
    let at = TSC_PER_US as usize;
    ram[at..at + 4].copy_from_slice(&cycles.max(1).to_le_bytes());
}

/// The host's TSC cycles per µs, measured once per process over 10 ms of
/// wall clock (a guest's TSC runs at the host's rate unless its VMM
/// scales it: KVM says so through `KVM_GET_TSC_KHZ`, and QEMU's TCG reads
/// the host's TSC). 1000 where there is no TSC to read.
pub fn host_tsc_per_us() -> u32 {
    static RATE: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *RATE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let start = std::time::Instant::now();
            // SAFETY: RDTSC has no memory effects; every x86-64 CPU has it.
            let t0 = unsafe { core::arch::x86_64::_rdtsc() };
            std::thread::sleep(std::time::Duration::from_millis(10));
            // SAFETY: as above.
            let t1 = unsafe { core::arch::x86_64::_rdtsc() };
            let us = start.elapsed().as_micros().max(1) as u64;
            ((t1.wrapping_sub(t0)) / us).clamp(1, u32::MAX as u64) as u32
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            1000
        }
    })
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
        put(ram, SIPI_PAGE, &VMM_ASSISTED_SIPI_PAGE);
        set_tsc_per_us(ram, host_tsc_per_us());
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
        put(ram, IDLE_HOOK, &0u64.to_le_bytes());
        put(ram, X2APIC, &u32::from(x2apic).to_le_bytes());
        put(ram, LOG_PTR, &LOG.to_le_bytes());
        ram[COUNTS as usize..COUNTS as usize + 1024].fill(0);
        put(ram, BODY_DIR, &table.body_dir);
        put(ram, NTH_TABLE, &table.nth);
        put(ram, OPS, &table.ops);
    }

    /// Several CPUs: writes a scenario's table and resets the variables of
    /// `cpus` CPUs (the globals, and each CPU's block: its log pointer,
    /// counts, handler tables, mailbox, x2APIC flag). Sets [`SMP`], so
    /// CPU 0 goes to the mailbox loop after its start.
    pub fn load_smp(&self, ram: &mut [u8], table: &table::Table, x2apic: bool, cpus: usize) {
        self.load(ram, table, x2apic);
        let put = |ram: &mut [u8], at: u64, bytes: &[u8]| {
            ram[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
        };
        put(ram, SMP, &1u32.to_le_bytes());
        put(ram, CPUS, &(cpus as u32).to_le_bytes());
        for cpu in 0..cpus {
            let block = cpu_block(cpu);
            put(ram, block + PCPU_MAILBOX, &0u32.to_le_bytes());
            put(ram, block + PCPU_OPS_DONE, &0u32.to_le_bytes());
            put(ram, block + PCPU_INDEX, &(cpu as u32).to_le_bytes());
            if cpu == 0 {
                continue;
            }
            let (log, _) = cpu_log(cpu);
            put(ram, block + PCPU_X2APIC, &u32::from(x2apic).to_le_bytes());
            put(ram, block + PCPU_LOG_PTR, &log.to_le_bytes());
            put(ram, block + PCPU_GP_FAULTED, &0u32.to_le_bytes());
            let counts = (block + PCPU_COUNTS) as usize;
            ram[counts..counts + 1024].fill(0);
            if let Some((body_dir, nth)) = table.ap_tables.get(cpu - 1) {
                put(ram, block + PCPU_BODY_DIR, body_dir);
                put(ram, block + PCPU_NTH_TABLE, nth);
            }
        }
    }

    /// Several CPUs: posts top-level op `k` to CPU `cpu`'s mailbox.
    pub fn post(&self, ram: &mut [u8], cpu: usize, k: usize) {
        let at = (cpu_block(cpu) + PCPU_MAILBOX) as usize;
        ram[at..at + 4].copy_from_slice(&(k as u32 + 1).to_le_bytes());
        let at = CUR_OP as usize;
        ram[at..at + 4].copy_from_slice(&(k as u32).to_le_bytes());
    }

    /// Several CPUs: CPU `cpu`'s log written so far.
    pub fn cpu_log_bytes<'r>(&self, ram: &'r [u8], cpu: usize) -> &'r [u8] {
        let (start, end) = cpu_log(cpu);
        let at = (cpu_block(cpu) + PCPU_LOG_PTR) as usize;
        let ptr = u64::from_le_bytes(ram[at..at + 8].try_into().expect("8 bytes"));
        &ram[start as usize..ptr.clamp(start, end) as usize]
    }

    /// Several CPUs: the log pointer of every CPU and the delivery count,
    /// which change whenever a CPU records anything (the VMM's test for a
    /// settling round that changed nothing).
    pub fn progress(&self, ram: &[u8], cpus: usize) -> (u64, u32) {
        let mut sum = 0u64;
        for cpu in 0..cpus {
            let at = (cpu_block(cpu) + PCPU_LOG_PTR) as usize;
            sum = sum.wrapping_add(u64::from_le_bytes(
                ram[at..at + 8].try_into().expect("8 bytes"),
            ));
        }
        let at = DELIVERIES as usize;
        (
            sum,
            u32::from_le_bytes(ram[at..at + 4].try_into().expect("4 bytes")),
        )
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

/// The SIPI page of the VMM-assisted AP start (KVM, HVF), real mode at
/// 0x0800:0000: `mov dx, AP_START_PORT; out dx, al; hlt; jmp $-1`. The VMM
/// answers the `out` by giving the vCPU the long-mode start state at
/// [`stub::Stub::sipi_entry`] (docs/guest-stub.md, "Several CPUs").
pub const VMM_ASSISTED_SIPI_PAGE: [u8; 7] = [
    0xba,
    AP_START_PORT as u8,
    (AP_START_PORT >> 8) as u8,
    0xee,
    0xf4,
    0xeb,
    0xfd,
];

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
    fn per_cpu_blocks_are_disjoint_and_inside_guest_ram() {
        let mut spans = vec![
            (GDT, PDPT + 0x1000),
            (SIPI_PAGE, SIPI_PAGE + 0x1000),
            (PD, PD + 0x4000),
            (CODE, CODE_END),
            (DATA, OPS_END),
            (LOG, LOG_END),
        ];
        for cpu in 1..MAX_CPUS {
            let block = cpu_block(cpu);
            assert_eq!(cpu_stack_top(cpu), block + AP_STACK_TOP);
            assert_eq!(cpu_log(cpu), (block + AP_LOG, block + AP_STRIDE));
            spans.push((block, block + AP_STRIDE));
        }
        assert!(spans.iter().all(|&(_, end)| end <= RAM_SIZE as u64));
        spans.sort();
        assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0), "{spans:x?}");
        // The SIPI page is between the PDPT and the page directories.
        const { assert!(PDPT + 0x1000 <= SIPI_PAGE && SIPI_PAGE + 0x1000 <= PD) };
        assert_eq!(SIPI_PAGE, 0x8000);
    }

    fn body_at(dir: &[u8], vector: usize) -> u64 {
        u64::from_le_bytes(dir[vector * 8..vector * 8 + 8].try_into().unwrap())
    }

    fn nth_entries(nth: &[u8]) -> Vec<(u32, u32, u64)> {
        nth.chunks(16)
            .map(|c| {
                (
                    u32::from_le_bytes(c[0..4].try_into().unwrap()),
                    u32::from_le_bytes(c[4..8].try_into().unwrap()),
                    u64::from_le_bytes(c[8..16].try_into().unwrap()),
                )
            })
            .take_while(|e| e.0 != u32::MAX)
            .collect()
    }

    #[test]
    fn each_cpu_gets_the_most_specific_handler_body() {
        let scenario = crate::scenario::parse::parse(
            "config cpus=3\nhandler 0x40: nop\nhandler 0x40#2: cli\nhandler 0x40@1: sti\n\
             handler 0x40#3@1: hlt\nhandler 0x41@2: snapshot\nnop\n",
        )
        .unwrap();
        let t = table::encode(&scenario).unwrap();
        assert_eq!(t.ap_tables.len(), 2);
        // Bodies in handler-key order after the program (2 ops: nop, END).
        let body = |i: u64| OPS + 32 + 32 * i;
        let (plain, nth_generic, at1, nth_at1, at2_41) =
            (body(0), body(1), body(2), body(3), body(4));
        let default = body(5);
        // CPU 0: 0x40 and 0x40#2; 0x41 falls back to eoi.
        assert_eq!(body_at(&t.body_dir, 0x40), plain);
        assert_eq!(body_at(&t.body_dir, 0x41), default);
        assert_eq!(nth_entries(&t.nth), vec![(0x40, 2, nth_generic)]);
        // CPU 1: 0x40@1 beats 0x40 and 0x40#2; 0x40#3@1 beats 0x40@1.
        let (dir1, nth1) = &t.ap_tables[0];
        assert_eq!(body_at(dir1, 0x40), at1);
        assert_eq!(nth_entries(nth1), vec![(0x40, 3, nth_at1)]);
        // CPU 2: the generic ones, and its own 0x41.
        let (dir2, nth2) = &t.ap_tables[1];
        assert_eq!(body_at(dir2, 0x40), plain);
        assert_eq!(body_at(dir2, 0x41), at2_41);
        assert_eq!(nth_entries(nth2), vec![(0x40, 2, nth_generic)]);
    }

    #[test]
    fn cpu_logs_merge_by_op_with_their_cpu() {
        let rec = |op: u32, vector: u32| {
            [stub::record::DELIVER, op, vector, 0]
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .collect::<Vec<u8>>()
        };
        let cpu0 = [rec(0, 0x20), rec(2, 0x21)].concat();
        let cpu1 = [rec(1, 0x30), rec(2, 0x31)].concat();
        let events = log::decode_cpus([&cpu0[..], &cpu1[..]]).unwrap();
        let got: Vec<(usize, u8)> = events.iter().map(|e| (e.op, e.cpu)).collect();
        assert_eq!(got, vec![(0, 0), (1, 1), (2, 0), (2, 1)]);
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
