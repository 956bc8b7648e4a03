//! KVM's own per-vCPU statistics, for `irqdiff bench kvm`: every VM exit KVM
//! counts, the ones it handles in the kernel (the in-kernel LAPIC's and
//! IOAPIC's emulated accesses, which never return from `KVM_RUN`) as well as
//! the ones that reach userspace.
//!
//! Where they come from, in order of preference:
//! - the binary statistics file of the vCPU (`KVM_GET_STATS_FD` on the vCPU
//!   fd, `KVM_CAP_BINARY_STATS_FD`, Linux 5.14+; its layout is
//!   Documentation/virt/kvm/api.rst, "KVM_GET_STATS_FD"): a header, one
//!   descriptor per statistic with its name, and a block of u64 values;
//! - else debugfs, `/sys/kernel/debug/kvm/<pid>-<vm fd>/vcpu<N>/<name>`, one
//!   decimal file per statistic (where debugfs is mounted and readable);
//! - else none, and the reason why.
//!
//! Only cumulative counters of one value are read (`exits`, `io_exits`,
//! `mmio_exits`, `halt_exits`, `irq_injections`, `insn_emulation`...); the
//! names are KVM's own, so what each one counts is KVM's definition
//! (arch/x86/kvm/x86.c, `kvm_vcpu_stats_desc`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use kvm_bindings::{
    kvm_stats_desc, kvm_stats_header, KVM_CAP_BINARY_STATS_FD, KVM_STATS_TYPE_CUMULATIVE,
    KVM_STATS_TYPE_MASK,
};
use kvm_ioctls::{VcpuFd, VmFd};

vmm_sys_util::ioctl_io_nr!(KVM_GET_STATS_FD, kvm_bindings::KVMIO, 0xce);

/// Why a vCPU's statistics cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// Neither the binary statistics nor debugfs are there.
    #[error("KVM's vCPU statistics are unavailable: {0}")]
    Unavailable(String),
    /// The statistics file is there but could not be read or parsed.
    #[error("reading KVM's vCPU statistics ({what})")]
    Read {
        what: String,
        #[source]
        source: io::Error,
    },
}

fn read_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> StatsError {
    let what = what.into();
    move |source| StatsError::Read { what, source }
}

/// Where a vCPU's statistics are read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsSource {
    /// `KVM_GET_STATS_FD`.
    BinaryStatsFd,
    /// `/sys/kernel/debug/kvm`.
    Debugfs,
}

/// Counter values by KVM's names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters(pub BTreeMap<String, u64>);

impl Counters {
    /// A counter's value, 0 when KVM has no counter of that name.
    pub fn get(&self, name: &str) -> u64 {
        self.0.get(name).copied().unwrap_or(0)
    }

    /// What each counter gained since `before` (counters are cumulative;
    /// one missing from `before` counts from 0, as on a fresh vCPU).
    pub fn since(&self, before: &Counters) -> Counters {
        Counters(
            self.0
                .iter()
                .map(|(name, value)| (name.clone(), value.saturating_sub(before.get(name))))
                .collect(),
        )
    }

    /// Adds `other`'s values to these.
    pub fn add(&mut self, other: &Counters) {
        for (name, value) in &other.0 {
            *self.0.entry(name.clone()).or_default() += value;
        }
    }
}

/// One cumulative single-value statistic of the binary file: its name and
/// its byte offset in the data block.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Descriptor {
    name: String,
    offset: u64,
}

/// The layout of a binary statistics file, read once: the descriptors do
/// not change over the file's life, only the data block.
#[derive(Clone, Debug, PartialEq, Eq)]
struct BinaryLayout {
    data_offset: u64,
    /// Bytes of the data block to read: up to the last counter kept.
    data_len: usize,
    counters: Vec<Descriptor>,
    /// The single-value statistics that are not cumulative (instant
    /// values, peaks, booleans such as `blocking`), read one at a time.
    instants: Vec<Descriptor>,
}

/// A file read at offsets (a statistics fd, or a buffer in tests).
trait ReadAt {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let bytes = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

impl BinaryLayout {
    /// Parses the header and descriptors (api.rst: each descriptor is
    /// `struct kvm_stats_desc` followed by `name_size` bytes of name).
    fn parse(file: &(impl ReadAt + ?Sized)) -> io::Result<BinaryLayout> {
        let mut header = [0u8; size_of::<kvm_stats_header>()];
        file.read_exact_at(&mut header, 0)?;
        let name_size = u32_at(&header, 4) as usize;
        let num_desc = u32_at(&header, 8) as usize;
        let desc_offset = u32_at(&header, 16) as u64;
        let data_offset = u32_at(&header, 20) as u64;
        let fixed = size_of::<kvm_stats_desc>();
        if name_size == 0 || name_size > 4096 || num_desc > 65_536 {
            return Err(invalid(format!(
                "implausible header: name_size {name_size}, num_desc {num_desc}"
            )));
        }
        let stride = fixed + name_size;
        let mut descs = vec![0u8; stride * num_desc];
        file.read_exact_at(&mut descs, desc_offset)?;
        let mut counters = Vec::new();
        let mut instants = Vec::new();
        let mut data_len = 0;
        for desc in descs.chunks_exact(stride) {
            let flags = u32_at(desc, 0);
            let size = u16::from_le_bytes([desc[6], desc[7]]);
            let offset = u32_at(desc, 8) as u64;
            if size != 1 {
                continue;
            }
            let name = &desc[fixed..];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            let descriptor = Descriptor {
                name: String::from_utf8_lossy(name).into_owned(),
                offset,
            };
            if flags & KVM_STATS_TYPE_MASK != KVM_STATS_TYPE_CUMULATIVE {
                instants.push(descriptor);
                continue;
            }
            data_len = data_len.max(offset as usize + 8);
            counters.push(descriptor);
        }
        Ok(BinaryLayout {
            data_offset,
            data_len,
            counters,
            instants,
        })
    }

    /// Reads the counters' current values: one read of the data block.
    fn read(&self, file: &(impl ReadAt + ?Sized)) -> io::Result<Counters> {
        let mut data = vec![0u8; self.data_len];
        file.read_exact_at(&mut data, self.data_offset)?;
        Ok(Counters(
            self.counters
                .iter()
                .map(|d| {
                    let at = d.offset as usize;
                    let value = u64::from_le_bytes(data[at..at + 8].try_into().expect("8 bytes"));
                    (d.name.clone(), value)
                })
                .collect(),
        ))
    }
}

/// Reads a debugfs vCPU directory: every file whose content is one decimal
/// number (the cumulative counters and the instant ones alike; the bench
/// only looks at cumulative names).
fn read_debugfs_dir(dir: &Path) -> io::Result<Counters> {
    let mut counters = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        if let Ok(value) = text.trim().parse::<u64>() {
            counters.insert(entry.file_name().to_string_lossy().into_owned(), value);
        }
    }
    if counters.is_empty() {
        return Err(invalid(format!("no counters in {}", dir.display())));
    }
    Ok(Counters(counters))
}

/// KVM's `blocking` statistic of one vCPU (an instant boolean of the
/// binary statistics file, kvm_main.c `kvm_vcpu_block`): 1 while the vCPU
/// waits in the kernel for an event (a halted vCPU), 0 otherwise. Read by
/// the kick watchdog from its own thread (one `pread`, which neither stops
/// nor disturbs the vCPU), so that a halted vCPU is kicked as soon as it
/// blocks rather than after a whole kick period.
#[derive(Debug)]
pub struct BlockingFlag {
    file: File,
    /// The byte offset of its value in the file.
    at: u64,
}

impl BlockingFlag {
    /// `vcpu`'s flag; None where KVM has no binary statistics or no
    /// `blocking` statistic in them (before Linux 5.16).
    pub fn open(vm: &VmFd, vcpu: &VcpuFd) -> Option<BlockingFlag> {
        if vm.check_extension_raw(KVM_CAP_BINARY_STATS_FD.into()) <= 0 {
            return None;
        }
        let file = stats_file(vcpu).ok()?;
        let layout = BinaryLayout::parse(&file).ok()?;
        let at = BlockingFlag::offset_in(&layout)?;
        Some(BlockingFlag { file, at })
    }

    fn offset_in(layout: &BinaryLayout) -> Option<u64> {
        layout
            .instants
            .iter()
            .find(|d| d.name == "blocking")
            .map(|d| layout.data_offset + d.offset)
    }

    /// Whether the vCPU is blocked in the kernel now.
    pub fn is_set(&self) -> io::Result<bool> {
        let mut value = [0u8; 8];
        FileExt::read_exact_at(&self.file, &mut value, self.at)?;
        Ok(u64::from_le_bytes(value) != 0)
    }
}

/// A vCPU's binary statistics file.
fn stats_file(vcpu: &VcpuFd) -> io::Result<File> {
    // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd
    // (or -1 with errno) on a vCPU fd.
    let fd = unsafe { vmm_sys_util::ioctl::ioctl(vcpu, KVM_GET_STATS_FD()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by the kernel and is owned by nothing else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// An open view of one vCPU's statistics.
pub struct VcpuStats {
    source: Source,
}

enum Source {
    Binary { file: File, layout: BinaryLayout },
    Debugfs { dir: PathBuf },
}

impl VcpuStats {
    /// Opens vCPU `index`'s statistics (`vcpu`, of `vm`): the binary file
    /// where KVM has it, else debugfs, else why neither.
    pub fn open(vm: &VmFd, vcpu: &VcpuFd, index: u32) -> Result<VcpuStats, StatsError> {
        let binary_why = if vm.check_extension_raw(KVM_CAP_BINARY_STATS_FD.into()) > 0 {
            match VcpuStats::open_binary(vcpu) {
                Ok(stats) => return Ok(stats),
                Err(e) => format!("KVM_GET_STATS_FD failed: {e}"),
            }
        } else {
            "no KVM_CAP_BINARY_STATS_FD (Linux < 5.14)".to_string()
        };
        // The VM's debugfs directory is named after this process and the
        // VM's fd number (kvm_create_vm_debugfs in virt/kvm/kvm_main.c).
        let dir = PathBuf::from(format!(
            "/sys/kernel/debug/kvm/{}-{}/vcpu{index}",
            std::process::id(),
            vm.as_raw_fd()
        ));
        match read_debugfs_dir(&dir) {
            Ok(_) => Ok(VcpuStats {
                source: Source::Debugfs { dir },
            }),
            Err(e) => Err(StatsError::Unavailable(format!(
                "{binary_why}; and debugfs: {}: {e}",
                dir.display()
            ))),
        }
    }

    fn open_binary(vcpu: &VcpuFd) -> io::Result<VcpuStats> {
        let file = stats_file(vcpu)?;
        let layout = BinaryLayout::parse(&file)?;
        Ok(VcpuStats {
            source: Source::Binary { file, layout },
        })
    }

    /// Where these statistics come from.
    pub fn source(&self) -> StatsSource {
        match self.source {
            Source::Binary { .. } => StatsSource::BinaryStatsFd,
            Source::Debugfs { .. } => StatsSource::Debugfs,
        }
    }

    /// The counters' current values: one `pread` of the binary file, or a
    /// read of each debugfs file.
    pub fn read(&self) -> Result<Counters, StatsError> {
        match &self.source {
            Source::Binary { file, layout } => layout
                .read(file)
                .map_err(read_error("KVM_GET_STATS_FD data")),
            Source::Debugfs { dir } => {
                read_debugfs_dir(dir).map_err(read_error(dir.display().to_string()))
            }
        }
    }
}

/// The counters the bench reports, in this order: every VM exit, then the
/// kinds KVM counts apart (an exit may count in several or none).
pub const REPORTED: &[&str] = &[
    "exits",
    "io_exits",
    "mmio_exits",
    "halt_exits",
    "irq_exits",
    "irq_window_exits",
    "signal_exits",
    "request_irq_exits",
    "insn_emulation",
    "irq_injections",
    "nmi_injections",
    "req_event",
    "host_state_reload",
];

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary statistics file as api.rst lays it out: header, id string,
    /// descriptors with `name_size`-byte names, data block.
    fn stats_file(stats: &[(&str, u32, u16, u64)]) -> Vec<u8> {
        let name_size = 48usize;
        let fixed = size_of::<kvm_stats_desc>();
        let id_offset = 24u32;
        let desc_offset = id_offset + name_size as u32;
        let data_offset = desc_offset + ((fixed + name_size) * stats.len()) as u32;
        let mut out = Vec::new();
        for word in [0, name_size as u32, stats.len() as u32, id_offset] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.extend_from_slice(&desc_offset.to_le_bytes());
        out.extend_from_slice(&data_offset.to_le_bytes());
        out.resize(desc_offset as usize, 0);
        let mut data = Vec::new();
        for (name, flags, size, value) in stats {
            out.extend_from_slice(&flags.to_le_bytes());
            out.extend_from_slice(&0i16.to_le_bytes());
            out.extend_from_slice(&size.to_le_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            let mut name = name.as_bytes().to_vec();
            name.resize(name_size, 0);
            out.extend_from_slice(&name);
            for i in 0..*size as u64 {
                data.extend_from_slice(&(value + i).to_le_bytes());
            }
        }
        out.extend_from_slice(&data);
        out
    }

    #[test]
    fn the_binary_file_gives_its_cumulative_single_counters_by_name() {
        let file = stats_file(&[
            ("exits", KVM_STATS_TYPE_CUMULATIVE, 1, 1234),
            ("guest_mode", kvm_bindings::KVM_STATS_TYPE_INSTANT, 1, 1),
            (
                "halt_wait_hist",
                kvm_bindings::KVM_STATS_TYPE_LOG_HIST,
                4,
                9,
            ),
            ("mmio_exits", KVM_STATS_TYPE_CUMULATIVE, 1, 56),
        ]);
        let layout = BinaryLayout::parse(file.as_slice()).unwrap();
        let counters = layout.read(file.as_slice()).unwrap();
        assert_eq!(
            counters.0.into_iter().collect::<Vec<_>>(),
            vec![("exits".to_string(), 1234), ("mmio_exits".to_string(), 56)]
        );
    }

    #[test]
    fn the_blocking_flag_is_found_among_the_instant_statistics() {
        let file = stats_file(&[
            ("exits", KVM_STATS_TYPE_CUMULATIVE, 1, 1234),
            (
                "halt_wait_hist",
                kvm_bindings::KVM_STATS_TYPE_LOG_HIST,
                4,
                9,
            ),
            ("blocking", kvm_bindings::KVM_STATS_TYPE_INSTANT, 1, 1),
        ]);
        let layout = BinaryLayout::parse(file.as_slice()).unwrap();
        let at = BlockingFlag::offset_in(&layout).expect("a blocking statistic");
        assert_eq!(
            u64::from_le_bytes(file[at as usize..][..8].try_into().unwrap()),
            1
        );
        // Not a counter: the bench's counters leave it out.
        assert_eq!(layout.read(file.as_slice()).unwrap().get("blocking"), 0);
        let without = stats_file(&[("exits", KVM_STATS_TYPE_CUMULATIVE, 1, 1)]);
        assert_eq!(
            BlockingFlag::offset_in(&BinaryLayout::parse(without.as_slice()).unwrap()),
            None
        );
    }

    #[test]
    fn a_truncated_binary_file_is_an_error_not_a_panic() {
        let file = stats_file(&[("exits", KVM_STATS_TYPE_CUMULATIVE, 1, 1)]);
        let layout = BinaryLayout::parse(file.as_slice()).unwrap();
        assert!(layout.read(&file[..file.len() - 4]).is_err());
        assert!(BinaryLayout::parse(&file[..30]).is_err());
        let mut garbage = file.clone();
        garbage[4..8].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(
            BinaryLayout::parse(garbage.as_slice()).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn counters_since_an_earlier_reading_count_new_names_from_zero() {
        let before = Counters([("exits".to_string(), 10)].into_iter().collect());
        let after = Counters(
            [("exits".to_string(), 25), ("io_exits".to_string(), 3)]
                .into_iter()
                .collect(),
        );
        let delta = after.since(&before);
        assert_eq!((delta.get("exits"), delta.get("io_exits")), (15, 3));
        assert_eq!(delta.get("no_such_counter"), 0);
        let mut sum = delta.clone();
        sum.add(&delta);
        assert_eq!(sum.get("exits"), 30);
    }

    #[test]
    fn a_debugfs_directory_gives_its_numeric_files() {
        let dir = std::env::temp_dir().join(format!("irqdiff-kvm-stats-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("exits"), "77\n").unwrap();
        std::fs::write(dir.join("halt_exits"), "5\n").unwrap();
        std::fs::write(dir.join("not_a_number"), "x\n").unwrap();
        let counters = read_debugfs_dir(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            counters.0.into_iter().collect::<Vec<_>>(),
            vec![("exits".to_string(), 77), ("halt_exits".to_string(), 5)]
        );
        assert!(read_debugfs_dir(Path::new("/nonexistent/irqdiff")).is_err());
    }
}
