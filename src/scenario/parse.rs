//! Parser for the `.irq` text format (docs/scenario-format.md).
//!
//! Line-oriented: each line is a `config`, a `handler` or one op. A line that
//! does not parse is rejected with its line, column and what was expected;
//! nothing of a scenario with an error runs.

use std::collections::btree_map::Entry;
use std::fmt;

use super::{
    ApStart, ApicMode, Config, Deadline, DeliveryMode, DestMode, HandlerKey, HostOp, IoapicVersion,
    Ipi, IpiDelivery, Irqchip, IsaLine, Msi, MsiDelivery, Op, PicPort, Pin, Polarity, Route,
    RouteOrder, Scenario, Shorthand, TimerOpMode, TimerSetup, Trigger, MAX_CPUS, PINS,
    TIMER_WAIT_MAX_US,
};

/// A scenario text that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters) of the offending token.
    pub column: usize,
    pub expected: String,
    /// The offending token, quoted, or `end of line`.
    pub found: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: expected {}, found {}",
            self.line, self.column, self.expected, self.found
        )
    }
}

impl std::error::Error for ParseError {}

/// Every op keyword, for error messages and near-miss suggestions.
pub const OP_KEYWORDS: &[&str] = &[
    "route",
    "mask",
    "unmask",
    "assert",
    "deassert",
    "pulse",
    "msi",
    "eoi",
    "ioapic-eoi",
    "self-ipi",
    "tpr",
    "cr8",
    "svr",
    "cli",
    "sti",
    "nop",
    "hlt",
    "sti-hlt",
    "snapshot",
    "ioapic-read",
    "ioapic-write",
    "lapic-read",
    "lapic-write",
    "lapic-mmio-read",
    "lapic-mmio-write",
    "apic-base",
    "ipi",
    "pic-write",
    "pic-read",
    "isa-assert",
    "isa-deassert",
    "isa-pulse",
    "timer",
    "tsc-deadline",
    "tsc-deadline-read",
    "timer-wait",
];

/// What can only be checked once the whole config is known (handler lines
/// may come before `config`): each with the error to report.
enum Deferred {
    /// A CPU index (`cpu K:`, `handler V@K:`) must be below `cpus`.
    Cpu(u8, ParseError),
    /// An IPI destination above 0xff needs `apic=x2apic`.
    WideDest(ParseError),
    /// `apic-ids=` must list exactly `cpus` IDs.
    ApicIds(usize, ParseError),
}

/// A word of a line and its 1-based column.
#[derive(Clone, Copy, Debug)]
struct Word<'a> {
    text: &'a str,
    column: usize,
}

struct Line<'a> {
    number: usize,
    /// Column just past the last character, for `end of line` errors.
    end: usize,
    _text: &'a str,
}

impl Line<'_> {
    fn error(&self, at: Option<Word<'_>>, expected: impl Into<String>) -> ParseError {
        ParseError {
            line: self.number,
            column: at.map_or(self.end, |w| w.column),
            expected: expected.into(),
            found: at.map_or("end of line".to_string(), |w| format!("`{}`", w.text)),
        }
    }
}

/// Splits `text` (starting at 1-based `column`) into whitespace-separated words.
fn words(text: &str, column: usize) -> Vec<Word<'_>> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    let mut start_chars = 0usize;
    for (chars, (i, c)) in text.char_indices().enumerate() {
        if c.is_whitespace() {
            if let Some(s) = start.take() {
                out.push(Word {
                    text: &text[s..i],
                    column: column + start_chars,
                });
            }
        } else if start.is_none() {
            start = Some(i);
            start_chars = chars;
        }
    }
    if let Some(s) = start {
        out.push(Word {
            text: &text[s..],
            column: column + start_chars,
        });
    }
    out
}

fn char_column(text: &str, byte: usize) -> usize {
    text[..byte].chars().count() + 1
}

/// Parses a scenario.
pub fn parse(text: &str) -> Result<Scenario, ParseError> {
    let mut s = Scenario::default();
    let mut config_keys: Vec<&str> = Vec::new();
    let mut deferred: Vec<Deferred> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let content = strip_comment(raw);
        let line = Line {
            number: index + 1,
            end: raw.chars().count() + 1,
            _text: raw,
        };
        let ws = words(content, 1);
        let Some(first) = ws.first() else { continue };
        match first.text {
            "config" => {
                if !s.ops.is_empty() {
                    return Err(line.error(
                        Some(*first),
                        "an op (`config` must come before the first op)",
                    ));
                }
                if ws.len() == 1 {
                    return Err(line.error(None, "a config setting KEY=VALUE"));
                }
                for w in &ws[1..] {
                    let key = parse_config_word(&line, *w, &mut s.config, &mut deferred)?;
                    if config_keys.contains(&key) {
                        return Err(line.error(
                            Some(*w),
                            format!("each config key once (`{key}` is set twice)"),
                        ));
                    }
                    config_keys.push(key);
                }
            }
            "handler" => parse_handler(&line, content, &mut s, &mut deferred)?,
            "cpu" => {
                let (cpu, op) = parse_cpu_op(&line, content, &ws, &mut deferred)?;
                s.op_cpus.resize(s.ops.len(), 0);
                s.op_cpus.push(cpu);
                s.ops.push(op);
            }
            _ => {
                s.ops.push(parse_op(&line, &ws, &mut deferred)?);
                if !s.op_cpus.is_empty() {
                    s.op_cpus.push(0);
                }
            }
        }
    }
    for check in deferred {
        match check {
            Deferred::Cpu(cpu, e) if cpu >= s.config.cpus => return Err(e),
            Deferred::WideDest(e) if s.config.apic == ApicMode::Xapic => return Err(e),
            Deferred::ApicIds(n, e) if n != s.config.cpus as usize => return Err(e),
            _ => {}
        }
    }
    s.normalize_op_cpus();
    Ok(s)
}

/// `cpu K: OP`: a top-level op run by CPU K (docs/scenario-format.md).
fn parse_cpu_op(
    line: &Line<'_>,
    content: &str,
    ws: &[Word<'_>],
    deferred: &mut Vec<Deferred>,
) -> Result<(u8, Op), ParseError> {
    const EXPECTED: &str = "`cpu K: OP` with a CPU index K 0-7 and `:`";
    let Some(k) = ws.get(1) else {
        return Err(line.error(None, EXPECTED));
    };
    let (num, rest) = match k.text.split_once(':') {
        Some((n, rest)) => (n, rest),
        None => return Err(line.error(Some(*k), EXPECTED)),
    };
    let cpu_word = Word {
        text: num,
        column: k.column,
    };
    let cpu = number(line, cpu_word, (MAX_CPUS - 1) as u64, EXPECTED)? as u8;
    deferred.push(Deferred::Cpu(
        cpu,
        line.error(
            Some(cpu_word),
            "a CPU index below `config cpus=N` (CPUs count from 0)",
        ),
    ));
    // The op's words: what follows the colon in the same word, then the rest.
    let mut op_words: Vec<Word<'_>> = Vec::new();
    if !rest.is_empty() {
        op_words.push(Word {
            text: rest,
            column: k.column + num.chars().count() + 1,
        });
    }
    op_words.extend_from_slice(&ws[2..]);
    let _ = content;
    let Some(first) = op_words.first() else {
        return Err(line.error(None, "an op after `cpu K:`"));
    };
    if matches!(first.text, "handler" | "config" | "cpu") {
        return Err(line.error(
            Some(*first),
            "an op after `cpu K:` (not `handler`, `config` or `cpu`)",
        ));
    }
    let op = parse_op(line, &op_words, deferred)?;
    if let Op::Host(_) = op {
        return Err(line.error(
            Some(*first),
            "a guest op after `cpu K:` (host ops are done by the VMM, not by a CPU)",
        ));
    }
    Ok((cpu, op))
}

/// Removes a `#` comment. In a `handler V#N:` head the `#` that directly
/// follows a digit separates V and N instead.
fn strip_comment(raw: &str) -> &str {
    let trimmed = raw.trim_start();
    let head_end = if trimmed.starts_with("handler") {
        raw.find(':')
    } else {
        None
    };
    for (i, c) in raw.char_indices() {
        if c != '#' {
            continue;
        }
        let in_head = head_end.is_some_and(|h| i < h);
        let after_digit = raw[..i]
            .chars()
            .last()
            .is_some_and(|p| p.is_ascii_alphanumeric());
        if in_head && after_digit {
            continue;
        }
        return &raw[..i];
    }
    raw
}

fn parse_config_word<'a>(
    line: &Line<'_>,
    w: Word<'a>,
    config: &mut Config,
    deferred: &mut Vec<Deferred>,
) -> Result<&'a str, ParseError> {
    let Some((key, value)) = w.text.split_once('=') else {
        return Err(line.error(
            Some(w),
            "a config setting KEY=VALUE (ioapic=, apic=, irqchip=, directed-eoi=, cpus=, apic-ids=, ap-start=)",
        ));
    };
    let bad = |expected: &str| line.error(Some(w), expected.to_string());
    match key {
        "ioapic" => {
            config.ioapic = match value {
                "0x20" | "32" => IoapicVersion::V20,
                "0x11" | "17" => IoapicVersion::V11,
                _ => return Err(bad("ioapic=0x20 or ioapic=0x11")),
            }
        }
        "apic" => {
            config.apic = match value {
                "xapic" => ApicMode::Xapic,
                "x2apic" => ApicMode::X2apic,
                _ => return Err(bad("apic=xapic or apic=x2apic")),
            }
        }
        "irqchip" => {
            config.irqchip = match value {
                "full" => Irqchip::Full,
                "split" => Irqchip::Split,
                _ => return Err(bad("irqchip=full or irqchip=split")),
            }
        }
        "directed-eoi" => {
            config.directed_eoi = match value {
                "off" => false,
                "on" => true,
                _ => return Err(bad("directed-eoi=off or directed-eoi=on")),
            }
        }
        "cpus" => {
            let v = Word {
                text: value,
                column: w.column + key.len() + 1,
            };
            let expected = format!("a CPU count 1-{MAX_CPUS} after `cpus=`");
            let n = number(line, v, MAX_CPUS as u64, &expected)?;
            if n == 0 {
                return Err(line.error(Some(v), expected));
            }
            config.cpus = n as u8;
        }
        "apic-ids" => {
            let mut column = w.column + key.len() + 1;
            let mut ids = super::INDEX_APIC_IDS;
            let mut n = 0;
            for part in value.split(',') {
                let v = Word { text: part, column };
                if n == MAX_CPUS {
                    return Err(line.error(
                        Some(v),
                        format!("at most {MAX_CPUS} APIC IDs after `apic-ids=`"),
                    ));
                }
                // 0xff is the broadcast destination (SDM §11.6.2.1).
                ids[n] = number(line, v, 0xfe, "an APIC ID 0-0xfe in `apic-ids=`")? as u8;
                n += 1;
                column += part.chars().count() + 1;
            }
            config.apic_ids = ids;
            deferred.push(Deferred::ApicIds(
                n,
                line.error(
                    Some(w),
                    "one APIC ID per CPU in `apic-ids=` (as many as `cpus=N`)",
                ),
            ));
        }
        "ap-start" => {
            config.ap_start = match value {
                "host" => ApStart::Host,
                "sipi" => ApStart::Sipi,
                _ => return Err(bad("ap-start=host or ap-start=sipi")),
            }
        }
        _ => {
            return Err(bad(
                "a config key: ioapic, apic, irqchip, directed-eoi, cpus, apic-ids or ap-start",
            ))
        }
    }
    Ok(key)
}

fn parse_handler(
    line: &Line<'_>,
    content: &str,
    s: &mut Scenario,
    deferred: &mut Vec<Deferred>,
) -> Result<(), ParseError> {
    // Byte offsets: the keyword starts after the leading whitespace (which
    // may hold multi-byte characters, so its column is not a byte index).
    let head_start = content.len() - content.trim_start().len() + "handler".len();
    let Some(colon) = content[head_start..].find(':').map(|i| head_start + i) else {
        let ws = words(content, 1);
        return Err(line.error(
            ws.get(2).copied(),
            "`:` after the handler's vector (handler VECTOR: OP; ...)",
        ));
    };
    let head = &content[head_start..colon];
    let head_words = words(head, char_column(content, head_start));
    let [key_word] = head_words[..] else {
        return Err(line.error(
            head_words.get(1).copied(),
            "one VECTOR, VECTOR#N, VECTOR@K or VECTOR#N@K between `handler` and `:`",
        ));
    };
    let (key_text, cpu_text) = match key_word.text.split_once('@') {
        Some((k, c)) => (k, Some(c)),
        None => (key_word.text, None),
    };
    let cpu = match cpu_text {
        None => None,
        Some(c) => {
            let w = Word {
                text: c,
                column: key_word.column + key_text.chars().count() + 1,
            };
            let expected = "a CPU index 0-7 after `@`";
            let cpu = number(line, w, (MAX_CPUS - 1) as u64, expected)? as u8;
            deferred.push(Deferred::Cpu(
                cpu,
                line.error(
                    Some(w),
                    "a CPU index below `config cpus=N` after `@` (CPUs count from 0)",
                ),
            ));
            Some(cpu)
        }
    };
    let (vector_text, nth_text) = match key_text.split_once('#') {
        Some((v, n)) => (v, Some(n)),
        None => (key_text, None),
    };
    let vector = number(
        line,
        Word {
            text: vector_text,
            column: key_word.column,
        },
        255,
        "a vector 0-255",
    )? as u8;
    let nth = match nth_text {
        None => None,
        Some(n) => {
            let w = Word {
                text: n,
                column: key_word.column + vector_text.chars().count() + 1,
            };
            let n = number(
                line,
                w,
                u32::MAX as u64,
                "a delivery count N >= 1 after `#`",
            )?;
            if n == 0 {
                return Err(line.error(
                    Some(w),
                    "a delivery count N >= 1 after `#` (deliveries count from 1)",
                ));
            }
            Some(n as u32)
        }
    };
    let mut body = Vec::new();
    let body_text = &content[colon + 1..];
    if !body_text.trim().is_empty() {
        let mut offset = colon + 1;
        for part in body_text.split(';') {
            let ws = words(part, char_column(content, offset));
            if ws.is_empty() {
                let column = char_column(content, offset);
                return Err(ParseError {
                    line: line.number,
                    column,
                    expected: "an op between `;` separators".into(),
                    found: if offset + part.len() >= content.len() {
                        "end of line".into()
                    } else {
                        "`;`".into()
                    },
                });
            }
            match ws[0].text {
                "handler" | "config" => {
                    return Err(line.error(
                        Some(ws[0]),
                        "an op (a handler body may not contain `handler` or `config`)",
                    ))
                }
                "cpu" => {
                    return Err(line.error(
                        Some(ws[0]),
                        "an op (a handler body runs on the CPU that took the interrupt; `cpu K:` is for top-level ops)",
                    ))
                }
                _ => body.push(parse_op(line, &ws, deferred)?),
            }
            offset += part.len() + 1;
        }
    }
    match s.handlers.entry(HandlerKey { vector, cpu, nth }) {
        Entry::Occupied(_) => Err(line.error(
            Some(key_word),
            format!(
                "one handler per vector and delivery (`{}` is defined twice)",
                key_word.text
            ),
        )),
        Entry::Vacant(e) => {
            e.insert(body);
            Ok(())
        }
    }
}

/// Parses a number (decimal or 0x hex) no larger than `max`.
fn number(line: &Line<'_>, w: Word<'_>, max: u64, expected: &str) -> Result<u64, ParseError> {
    let t = w.text;
    let parsed = if let Some(hex) = t.strip_prefix("0x") {
        if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            None
        } else {
            u64::from_str_radix(hex, 16).ok()
        }
    } else if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) {
        t.parse::<u64>().ok()
    } else {
        None
    };
    match parsed {
        Some(n) if n <= max => Ok(n),
        _ => Err(line.error(Some(w), expected.to_string())),
    }
}

fn pin(line: &Line<'_>, w: Option<Word<'_>>) -> Result<Pin, ParseError> {
    let expected = format!("a pin number 0-{}", PINS - 1);
    let w = w.ok_or_else(|| line.error(None, expected.clone()))?;
    let n = number(line, w, (PINS - 1) as u64, &expected)?;
    Ok(Pin::new(n as u8).expect("range checked"))
}

fn byte(line: &Line<'_>, w: Option<Word<'_>>, what: &str) -> Result<u8, ParseError> {
    let expected = format!("{what} 0-255");
    let w = w.ok_or_else(|| line.error(None, expected.clone()))?;
    Ok(number(line, w, 255, &expected)? as u8)
}

fn dword(line: &Line<'_>, w: Option<Word<'_>>, what: &str) -> Result<u32, ParseError> {
    let expected = format!("{what} (a 32-bit number)");
    let w = w.ok_or_else(|| line.error(None, expected.clone()))?;
    Ok(number(line, w, u32::MAX as u64, &expected)? as u32)
}

fn parse_op(
    line: &Line<'_>,
    ws: &[Word<'_>],
    deferred: &mut Vec<Deferred>,
) -> Result<Op, ParseError> {
    let kw = ws[0];
    let arg = |i: usize| ws.get(i).copied();
    // How many words the op takes, keyword included (None: options follow).
    let (op, used) = match kw.text {
        "route" => return parse_route(line, ws),
        "ipi" => return parse_ipi(line, ws, deferred),
        "msi" => return parse_msi(line, ws),
        "timer" => return parse_timer(line, ws),
        "tsc-deadline" => (Op::TscDeadline(deadline(line, arg(1))?), 2),
        "tsc-deadline-read" => (Op::TscDeadlineRead, 1),
        "timer-wait" => (Op::TimerWait(timer_wait(line, arg(1))?), 2),
        "mask" => (Op::Mask(pin(line, arg(1))?), 2),
        "unmask" => (Op::Unmask(pin(line, arg(1))?), 2),
        "assert" => (Op::Host(HostOp::Assert(pin(line, arg(1))?)), 2),
        "deassert" => (Op::Host(HostOp::Deassert(pin(line, arg(1))?)), 2),
        "pulse" => (Op::Host(HostOp::Pulse(pin(line, arg(1))?)), 2),
        "eoi" => (Op::Eoi, 1),
        "ioapic-eoi" => (Op::IoapicEoi(byte(line, arg(1), "a vector")?), 2),
        "self-ipi" => (Op::SelfIpi(byte(line, arg(1), "a vector")?), 2),
        "tpr" => (Op::Tpr(byte(line, arg(1), "a task priority")?), 2),
        "cr8" => (Op::Cr8(cr8(line, arg(1))?), 2),
        "svr" => (Op::Svr(dword(line, arg(1), "an SVR value")?), 2),
        "cli" => (Op::Cli, 1),
        "sti" => (Op::Sti, 1),
        "nop" => (Op::Nop, 1),
        "hlt" => (Op::Hlt, 1),
        "sti-hlt" => (Op::StiHlt, 1),
        "snapshot" => (Op::Snapshot, 1),
        "ioapic-read" => (
            Op::IoapicRead(byte(line, arg(1), "an IOAPIC register index")?),
            2,
        ),
        "ioapic-write" => (
            Op::IoapicWrite {
                index: byte(line, arg(1), "an IOAPIC register index")?,
                value: dword(line, arg(2), "a value")?,
            },
            3,
        ),
        "lapic-read" => (Op::LapicRead(lapic_offset(line, arg(1))?), 2),
        "lapic-write" => (
            Op::LapicWrite {
                offset: lapic_offset(line, arg(1))?,
                value: dword(line, arg(2), "a value")?,
            },
            3,
        ),
        "lapic-mmio-read" => (Op::LapicMmioRead(lapic_offset(line, arg(1))?), 2),
        "lapic-mmio-write" => (
            Op::LapicMmioWrite {
                offset: lapic_offset(line, arg(1))?,
                value: dword(line, arg(2), "a value")?,
            },
            3,
        ),
        "apic-base" => (
            Op::ApicBase(dword(line, arg(1), "an IA32_APIC_BASE value")?),
            2,
        ),
        // ---- PIC (issue 15)
        "pic-write" => (
            Op::PicWrite {
                port: pic_port(line, arg(1))?,
                value: byte(line, arg(2), "a byte")?,
            },
            3,
        ),
        "pic-read" => (Op::PicRead(pic_port(line, arg(1))?), 2),
        "isa-assert" => (Op::Host(HostOp::IsaAssert(isa_line(line, arg(1))?)), 2),
        "isa-deassert" => (Op::Host(HostOp::IsaDeassert(isa_line(line, arg(1))?)), 2),
        "isa-pulse" => (Op::Host(HostOp::IsaPulse(isa_line(line, arg(1))?)), 2),
        other => {
            let hint = closest(other, OP_KEYWORDS)
                .map_or(String::new(), |k| format!(" (did you mean `{k}`?)"));
            return Err(line.error(Some(kw), format!("an op, `handler` or `config`{hint}")));
        }
    };
    if let Some(extra) = ws.get(used) {
        return Err(line.error(Some(*extra), format!("end of line after `{}`", kw.text)));
    }
    Ok(op)
}

/// SDM §11.4.1: the registers are accessed with 32-bit loads and stores;
/// what a sub-dword or unaligned access does is model-specific, so the
/// format refuses it rather than compare it.
fn lapic_offset(line: &Line<'_>, w: Option<Word<'_>>) -> Result<u16, ParseError> {
    const EXPECTED: &str =
        "a local APIC offset 0x000-0xffc, a multiple of 4 (the APIC page is read and written in aligned dwords, SDM 11.4.1)";
    let w = w.ok_or_else(|| line.error(None, EXPECTED))?;
    let n = number(line, w, super::LAPIC_OFFSET_MAX as u64, EXPECTED)?;
    if n % 4 != 0 {
        return Err(line.error(Some(w), EXPECTED));
    }
    Ok(n as u16)
}

/// An 8259 or ELCR port (docs/pic.md).
fn pic_port(line: &Line<'_>, w: Option<Word<'_>>) -> Result<PicPort, ParseError> {
    const EXPECTED: &str =
        "a PIC port: 0x20, 0x21 (master), 0xa0, 0xa1 (slave), 0x4d0, 0x4d1 (ELCR)";
    let w = w.ok_or_else(|| line.error(None, EXPECTED))?;
    let n = number(line, w, 0xffff, EXPECTED)?;
    PicPort::new(n as u16).ok_or_else(|| line.error(Some(w), EXPECTED))
}

/// An ISA line 0-15 but the cascade, 2.
fn isa_line(line: &Line<'_>, w: Option<Word<'_>>) -> Result<IsaLine, ParseError> {
    const EXPECTED: &str =
        "an ISA line 0-15 other than 2 (the master's IR2 is the slave's cascade; the bus's IRQ2 is line 9)";
    let w = w.ok_or_else(|| line.error(None, EXPECTED))?;
    let n = number(line, w, 15, EXPECTED)?;
    IsaLine::new(n as u8).ok_or_else(|| line.error(Some(w), EXPECTED))
}

fn cr8(line: &Line<'_>, w: Option<Word<'_>>) -> Result<u8, ParseError> {
    const EXPECTED: &str = "a CR8 value 0-15 (CR8 holds TPR bits 7:4)";
    let w = w.ok_or_else(|| line.error(None, EXPECTED))?;
    Ok(number(line, w, super::CR8_MAX as u64, EXPECTED)? as u8)
}

/// Records that an option group was set, rejecting a second word of the
/// same group (`edge level`, `vector=1 vector=2`).
fn once<'a>(
    line: &Line<'_>,
    seen: &mut Vec<(&'static str, &'a str)>,
    group: &'static str,
    w: Word<'a>,
) -> Result<(), ParseError> {
    if let Some((_, first)) = seen.iter().find(|(g, _)| *g == group) {
        return Err(line.error(
            Some(w),
            format!("one {group} option (`{first}` already given)"),
        ));
    }
    seen.push((group, w.text));
    Ok(())
}

fn parse_route(line: &Line<'_>, ws: &[Word<'_>]) -> Result<Op, ParseError> {
    let pin = pin(line, ws.get(1).copied())?;
    let mut route = Route::default();
    let mut vector = None;
    let mut seen = Vec::new();
    for w in &ws[2..] {
        let group = match w.text {
            "edge" => { route.trigger = Trigger::Edge; "trigger" }
            "level" => { route.trigger = Trigger::Level; "trigger" }
            "high" => { route.polarity = Polarity::High; "polarity" }
            "low" => { route.polarity = Polarity::Low; "polarity" }
            "physical" => { route.dest_mode = DestMode::Physical; "destination-mode" }
            "logical" => { route.dest_mode = DestMode::Logical; "destination-mode" }
            "masked" => { route.masked = true; "mask" }
            "unmasked" => { route.masked = false; "mask" }
            "fixed" => { route.delivery = DeliveryMode::Fixed; "delivery-mode" }
            "lowest" => { route.delivery = DeliveryMode::Lowest; "delivery-mode" }
            "smi" => { route.delivery = DeliveryMode::Smi; "delivery-mode" }
            "nmi" => { route.delivery = DeliveryMode::Nmi; "delivery-mode" }
            "init" => { route.delivery = DeliveryMode::Init; "delivery-mode" }
            "extint" => { route.delivery = DeliveryMode::ExtInt; "delivery-mode" }
            t if t.starts_with("vector=") => {
                let v = Word { text: &t[7..], column: w.column + 7 };
                vector = Some(number(line, v, 255, "a vector 0-255 after `vector=`")? as u8);
                "vector"
            }
            t if t.starts_with("dest=") => {
                let v = Word { text: &t[5..], column: w.column + 5 };
                route.dest = number(line, v, 255, "a destination 0-255 after `dest=`")? as u8;
                "destination"
            }
            "order=high-first" => { route.order = RouteOrder::HighFirst; "order" }
            "order=low-first" => { route.order = RouteOrder::LowFirst; "order" }
            _ => {
                return Err(line.error(
                    Some(*w),
                    "a route option: vector=V, edge|level, high|low, physical|logical, dest=D, masked|unmasked, fixed|lowest|smi|nmi|init|extint, order=high-first|low-first",
                ))
            }
        };
        once(line, &mut seen, group, *w)?;
    }
    route.vector = vector.ok_or_else(|| line.error(None, "`vector=V` (route needs a vector)"))?;
    Ok(Op::Route { pin, route })
}

/// `tsc-deadline 0|now|+N` (N: 1 to 2^32-1 TSC cycles).
fn deadline(line: &Line<'_>, w: Option<Word<'_>>) -> Result<Deadline, ParseError> {
    const EXPECTED: &str =
        "a TSC deadline: 0, now, or +N (N TSC cycles after now, 1 to 4294967295)";
    let w = w.ok_or_else(|| line.error(None, EXPECTED))?;
    match w.text {
        "0" => Ok(Deadline::Disarm),
        "now" => Ok(Deadline::Now),
        t if t.starts_with('+') => {
            let n = Word {
                text: &t[1..],
                column: w.column + 1,
            };
            match number(line, n, u32::MAX as u64, EXPECTED)? {
                0 => Err(line.error(Some(w), EXPECTED)),
                n => Ok(Deadline::After(n as u32)),
            }
        }
        _ => Err(line.error(Some(w), EXPECTED)),
    }
}

/// `timer-wait max=N` (N: 1 to [`TIMER_WAIT_MAX_US`] µs).
fn timer_wait(line: &Line<'_>, w: Option<Word<'_>>) -> Result<u32, ParseError> {
    let expected = format!("`max=N`, the wait's bound in µs, 1-{TIMER_WAIT_MAX_US}");
    let w = w.ok_or_else(|| line.error(None, expected.clone()))?;
    let Some(text) = w.text.strip_prefix("max=") else {
        return Err(line.error(Some(w), expected));
    };
    let n = Word {
        text,
        column: w.column + 4,
    };
    match number(line, n, TIMER_WAIT_MAX_US as u64, &expected)? {
        0 => Err(line.error(Some(w), expected)),
        n => Ok(n as u32),
    }
}

/// `timer oneshot|periodic|tsc-deadline vector=V [masked|unmasked]
/// [divide=D] [count=C]`: the mode first, then options in any order.
fn parse_timer(line: &Line<'_>, ws: &[Word<'_>]) -> Result<Op, ParseError> {
    const MODES: &str = "a timer mode: oneshot, periodic or tsc-deadline";
    let mode_word = ws.get(1).copied().ok_or_else(|| line.error(None, MODES))?;
    let mode = match mode_word.text {
        "oneshot" => TimerOpMode::OneShot,
        "periodic" => TimerOpMode::Periodic,
        "tsc-deadline" => TimerOpMode::TscDeadline,
        _ => return Err(line.error(Some(mode_word), MODES)),
    };
    let mut setup = TimerSetup {
        mode,
        divide: 1,
        ..TimerSetup::default()
    };
    let (mut vector, mut count) = (None, None);
    let mut seen = Vec::new();
    for w in &ws[2..] {
        let group = match w.text {
            "masked" => {
                setup.masked = true;
                "mask"
            }
            "unmasked" => {
                setup.masked = false;
                "mask"
            }
            t if t.starts_with("vector=") => {
                let v = Word {
                    text: &t[7..],
                    column: w.column + 7,
                };
                vector = Some(number(line, v, 255, "a vector 0-255 after `vector=`")? as u8);
                "vector"
            }
            t if t.starts_with("divide=") => {
                const DIVISORS: &str = "a divisor 1, 2, 4, 8, 16, 32, 64 or 128 after `divide=`";
                let v = Word {
                    text: &t[7..],
                    column: w.column + 7,
                };
                let d = number(line, v, 128, DIVISORS)?;
                if !d.is_power_of_two() {
                    return Err(line.error(Some(v), DIVISORS));
                }
                setup.divide = d as u8;
                "divide"
            }
            t if t.starts_with("count=") => {
                let v = Word {
                    text: &t[6..],
                    column: w.column + 6,
                };
                count = Some(number(
                    line,
                    v,
                    u32::MAX as u64,
                    "an initial count (a 32-bit number) after `count=`",
                )? as u32);
                "count"
            }
            _ => {
                return Err(line.error(
                    Some(*w),
                    "a timer option: vector=V, masked|unmasked, divide=D, count=C",
                ))
            }
        };
        once(line, &mut seen, group, *w)?;
    }
    setup.vector = vector.ok_or_else(|| line.error(None, "`vector=V` (timer needs a vector)"))?;
    match (mode, count) {
        (TimerOpMode::TscDeadline, Some(_)) => {
            let w = ws[2..]
                .iter()
                .find(|w| w.text.starts_with("count="))
                .copied();
            return Err(line.error(
                w,
                "no `count=` in tsc-deadline mode (the initial count is ignored there, SDM 11.5.4.1; arm it with `tsc-deadline`)",
            ));
        }
        (TimerOpMode::TscDeadline, None) => {}
        (_, Some(c)) => setup.count = c,
        (_, None) => {
            return Err(line.error(
                None,
                "`count=C` (a one-shot or periodic timer needs its initial count)",
            ))
        }
    }
    Ok(Op::Timer(setup))
}

fn parse_msi(line: &Line<'_>, ws: &[Word<'_>]) -> Result<Op, ParseError> {
    let mut msi = Msi::default();
    let mut vector = None;
    let mut seen = Vec::new();
    for w in &ws[1..] {
        let group = match w.text {
            "physical" => {
                msi.dest_mode = DestMode::Physical;
                "destination-mode"
            }
            "logical" => {
                msi.dest_mode = DestMode::Logical;
                "destination-mode"
            }
            "edge" => {
                msi.trigger = Trigger::Edge;
                "trigger"
            }
            "level" => {
                msi.trigger = Trigger::Level;
                "trigger"
            }
            "fixed" => {
                msi.delivery = MsiDelivery::Fixed;
                "delivery-mode"
            }
            "lowest" => {
                msi.delivery = MsiDelivery::Lowest;
                "delivery-mode"
            }
            "nmi" => {
                msi.delivery = MsiDelivery::Nmi;
                "delivery-mode"
            }
            t if t.starts_with("vector=") => {
                let v = Word {
                    text: &t[7..],
                    column: w.column + 7,
                };
                vector = Some(number(line, v, 255, "a vector 0-255 after `vector=`")? as u8);
                "vector"
            }
            t if t.starts_with("dest=") => {
                let v = Word {
                    text: &t[5..],
                    column: w.column + 5,
                };
                msi.dest = number(line, v, 255, "a destination 0-255 after `dest=`")? as u8;
                "destination"
            }
            _ => return Err(line.error(
                Some(*w),
                "an msi option: vector=V, dest=D, physical|logical, edge|level, fixed|lowest|nmi",
            )),
        };
        once(line, &mut seen, group, *w)?;
    }
    msi.vector = vector.ok_or_else(|| line.error(None, "`vector=V` (msi needs a vector)"))?;
    Ok(Op::Host(HostOp::Msi(msi)))
}

fn parse_ipi(
    line: &Line<'_>,
    ws: &[Word<'_>],
    deferred: &mut Vec<Deferred>,
) -> Result<Op, ParseError> {
    let mut ipi = Ipi::default();
    let mut vector = None;
    let mut seen = Vec::new();
    let mut dest_word = None;
    for w in &ws[1..] {
        let group = match w.text {
            "physical" => { ipi.dest_mode = DestMode::Physical; "destination-mode" }
            "logical" => { ipi.dest_mode = DestMode::Logical; "destination-mode" }
            "edge" => { ipi.trigger = Trigger::Edge; "trigger" }
            "level" => { ipi.trigger = Trigger::Level; "trigger" }
            "fixed" => { ipi.delivery = IpiDelivery::Fixed; "delivery-mode" }
            "lowest" => { ipi.delivery = IpiDelivery::Lowest; "delivery-mode" }
            "nmi" => { ipi.delivery = IpiDelivery::Nmi; "delivery-mode" }
            "init" => { ipi.delivery = IpiDelivery::Init; "delivery-mode" }
            "init-deassert" => { ipi.delivery = IpiDelivery::InitDeassert; "delivery-mode" }
            "startup" => { ipi.delivery = IpiDelivery::Startup; "delivery-mode" }
            "self" => { ipi.shorthand = Shorthand::SelfOnly; "shorthand" }
            "all" => { ipi.shorthand = Shorthand::All; "shorthand" }
            "all-but-self" => { ipi.shorthand = Shorthand::AllButSelf; "shorthand" }
            t if t.starts_with("vector=") => {
                let v = Word { text: &t[7..], column: w.column + 7 };
                vector = Some((number(line, v, 255, "a vector 0-255 after `vector=`")? as u8, *w));
                "vector"
            }
            t if t.starts_with("dest=") => {
                let v = Word { text: &t[5..], column: w.column + 5 };
                ipi.dest = number(line, v, u32::MAX as u64, "a destination after `dest=` (0-0xff, or 32 bits in x2APIC mode)")? as u32;
                dest_word = Some(v);
                "destination"
            }
            _ => {
                return Err(line.error(
                    Some(*w),
                    "an ipi option: vector=V, dest=D, physical|logical, fixed|lowest|nmi|init|init-deassert|startup, self|all|all-but-self, edge|level",
                ))
            }
        };
        once(line, &mut seen, group, *w)?;
    }
    match (ipi.delivery, vector) {
        (IpiDelivery::Fixed | IpiDelivery::Lowest, Some((v, _))) => ipi.vector = v,
        (IpiDelivery::Fixed | IpiDelivery::Lowest, None) => {
            return Err(line.error(None, "`vector=V` (a fixed or lowest-priority ipi needs a vector)"))
        }
        (_, Some((_, w))) => {
            return Err(line.error(
                Some(w),
                "no `vector=` for an nmi, init or startup ipi (a startup IPI's vector is the stub's AP entry page)",
            ))
        }
        (_, None) => {}
    }
    if ipi.trigger == Trigger::Level
        && !matches!(ipi.delivery, IpiDelivery::Fixed | IpiDelivery::Lowest)
    {
        return Err(line.error(
            seen.iter()
                .find(|(g, _)| *g == "trigger")
                .and_then(|_| ws.iter().find(|w| w.text == "level").copied()),
            "`level` only for a fixed or lowest-priority ipi (INIT's levels are `init` and `init-deassert`)",
        ));
    }
    if let (true, Some(w)) = (ipi.dest > 0xff, dest_word) {
        deferred.push(Deferred::WideDest(line.error(
            Some(w),
            "a destination 0-0xff (a 32-bit destination needs `config apic=x2apic`)",
        )));
    }
    Ok(Op::Ipi(ipi))
}

/// The keyword within edit distance 2 of `word`, if any.
fn closest<'k>(word: &str, keywords: &[&'k str]) -> Option<&'k str> {
    keywords
        .iter()
        .map(|k| (edit_distance(word, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(row[j]).min(row[j + 1])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::print::print;

    fn err(text: &str) -> ParseError {
        parse(text).expect_err("should not parse")
    }

    #[test]
    fn parses_every_statement() {
        let text = "config ioapic=0x11 apic=x2apic irqchip=split directed-eoi=on\n\
                    handler 0x20: deassert 3; eoi\n\
                    handler 0x20#2:\n\
                    route 3 vector=0x20 level low logical dest=5 masked lowest # comment\n\
                    mask 3\nunmask 3\nassert 3\ndeassert 3\npulse 23\n\
                    msi vector=0x31 dest=1 logical level nmi\n\
                    eoi\nioapic-eoi 0x20\nself-ipi 0xf1\ntpr 0x20\nsvr 0x11ff\n\
                    cli\nsti\nnop\nhlt\nsti-hlt\nsnapshot\n\
                    ioapic-read 1\nioapic-write 0 0xf000000\nlapic-read 0x280\nlapic-write 0x80 0x10\n\
                    cr8 15\nroute 4 vector=0x21 order=low-first\nlapic-read 0xffc\n\
                    lapic-mmio-read 0x24\nlapic-mmio-write 0x400 1\n";
        let s = parse(text).unwrap();
        assert_eq!(s.config.ioapic, IoapicVersion::V11);
        assert!(s.config.directed_eoi);
        assert_eq!(s.ops.len(), 27);
        assert_eq!(s.ops[22], Op::Cr8(15));
        assert!(matches!(
            s.ops[23],
            Op::Route {
                route: Route {
                    order: RouteOrder::LowFirst,
                    ..
                },
                ..
            }
        ));
        assert_eq!(s.ops[24], Op::LapicRead(0xffc));
        assert_eq!(s.ops[25], Op::LapicMmioRead(0x24));
        assert_eq!(
            s.handler_body(0x20, 1),
            &[Op::Host(HostOp::Deassert(Pin::new(3).unwrap())), Op::Eoi]
        );
        assert_eq!(s.handler_body(0x20, 2), &[] as &[Op]);
        assert_eq!(s.handler_body(0x21, 1), &[Op::Eoi]);
        assert_eq!(parse(&print(&s)).unwrap(), s);
    }

    #[test]
    fn the_timer_ops_parse_print_and_round_trip() {
        let text = "handler 0xee: timer-wait max=10; eoi\n\
                    timer oneshot vector=0xee count=1000\n\
                    timer periodic vector=0x40 masked divide=128 count=0\n\
                    timer tsc-deadline vector=0xef\n\
                    tsc-deadline 0\ntsc-deadline now\ntsc-deadline +4294967295\n\
                    tsc-deadline-read\ntimer-wait max=1000000\n";
        let s = parse(text).unwrap();
        assert_eq!(
            s.ops[0],
            Op::Timer(TimerSetup {
                mode: TimerOpMode::OneShot,
                vector: 0xee,
                masked: false,
                divide: 1,
                count: 1000
            })
        );
        let Op::Timer(periodic) = s.ops[1] else {
            panic!("{:?}", s.ops[1])
        };
        assert_eq!(
            (periodic.lvt(), periodic.divide_register()),
            (0x3_0040, 0xa)
        );
        assert_eq!(s.ops[3], Op::TscDeadline(Deadline::Disarm));
        assert_eq!(s.ops[4], Op::TscDeadline(Deadline::Now));
        assert_eq!(s.ops[5], Op::TscDeadline(Deadline::After(u32::MAX)));
        assert_eq!(s.ops[6], Op::TscDeadlineRead);
        assert_eq!(s.ops[7], Op::TimerWait(TIMER_WAIT_MAX_US));
        assert!(s.uses_timer_ops() && s.uses_tsc_deadline());
        // Canonical: the divisor only when not 1, counts in decimal, no
        // count in TSC-deadline mode.
        assert_eq!(print(&s), text);
        assert_eq!(
            print(&parse("timer oneshot count=5 divide=1 vector=238 unmasked\n").unwrap()),
            "timer oneshot vector=0xee count=5\n"
        );
    }

    #[test]
    fn timer_op_errors_say_what_was_expected() {
        for (text, column, what) in [
            ("timer\n", 6, "a timer mode"),
            ("timer fast vector=1 count=1\n", 7, "a timer mode"),
            ("timer oneshot count=1\n", 22, "`vector=V`"),
            ("timer periodic vector=0x40\n", 27, "`count=C`"),
            (
                "timer oneshot vector=0x40 count=1 divide=3\n",
                42,
                "a divisor",
            ),
            (
                "timer oneshot vector=0x40 count=1 divide=256\n",
                42,
                "a divisor",
            ),
            (
                "timer tsc-deadline vector=0x40 count=1\n",
                32,
                "no `count=`",
            ),
            (
                "timer oneshot vector=0x40 count=1 count=2\n",
                35,
                "one count option",
            ),
            ("tsc-deadline later\n", 14, "a TSC deadline"),
            ("tsc-deadline +0\n", 14, "a TSC deadline"),
            ("timer-wait 10\n", 12, "`max=N`"),
            ("timer-wait max=0\n", 12, "`max=N`"),
            ("timer-wait max=1000001\n", 16, "`max=N`"),
        ] {
            let e = err(text);
            assert_eq!((e.line, e.column), (1, column), "{text}: {e}");
            assert!(e.to_string().contains(what), "{text}: {e}");
        }
    }

    #[test]
    fn canonical_text_round_trips() {
        let text = "config apic=x2apic\nhandler 0x76: deassert 14; eoi\nhandler 0x76#2: nop\n\
                    route 14 vector=0x76 level masked\nassert 14\nunmask 14\nmsi vector=0x40 dest=1\n";
        assert_eq!(print(&parse(text).unwrap()), text);
    }

    #[test]
    fn errors_name_line_column_and_expectation() {
        let e = err("nop\nassert 30\n");
        assert_eq!((e.line, e.column), (2, 8));
        assert_eq!(
            e.to_string(),
            "line 2, column 8: expected a pin number 0-23, found `30`"
        );
        let e = err("route 1 edge\n");
        assert_eq!(
            e.to_string(),
            "line 1, column 13: expected `vector=V` (route needs a vector), found end of line"
        );
        let e = err("  unmsak 3\n");
        assert_eq!((e.column, e.found.as_str()), (3, "`unmsak`"));
        assert!(
            e.expected.contains("did you mean `unmask`?"),
            "{}",
            e.expected
        );
    }

    #[test]
    fn rejects_conflicting_and_repeated_options() {
        let e = err("route 1 vector=0x20 edge level\n");
        assert_eq!(e.column, 26);
        assert!(
            e.expected.contains("`edge` already given"),
            "{}",
            e.expected
        );
        assert!(err("msi vector=1 vector=2\n")
            .expected
            .contains("one vector option"));
    }

    #[test]
    fn rejects_misplaced_and_duplicate_statements() {
        assert!(err("nop\nconfig apic=x2apic\n")
            .expected
            .contains("before the first op"));
        assert!(err("config apic=x2apic apic=xapic\n")
            .expected
            .contains("twice"));
        assert!(err("handler 0x20: eoi\nhandler 32: nop\n")
            .expected
            .contains("defined twice"));
        assert!(err("handler 0x20#0: eoi\n").expected.contains("N >= 1"));
        assert!(err("handler 0x20: eoi; ; nop\n")
            .expected
            .contains("between `;`"));
        assert!(err("handler 0x20: handler 0x21: eoi\n")
            .expected
            .contains("may not contain"));
        assert!(err("handler 0x100: eoi\n")
            .expected
            .contains("vector 0-255"));
        assert!(err("nop extra\n")
            .expected
            .contains("end of line after `nop`"));
        let e = err("lapic-read 0x286\n");
        assert_eq!((e.line, e.column, e.found.as_str()), (1, 12, "`0x286`"));
        assert!(e.expected.contains("0x000-0xffc, a multiple of 4"));
        let e = err("nop\nlapic-write 0x1000 1\n");
        assert_eq!((e.line, e.column), (2, 13));
        assert!(e.expected.contains("0x000-0xffc"));
        let e = err("cr8 16\n");
        assert_eq!((e.line, e.column, e.found.as_str()), (1, 5, "`16`"));
        assert!(e.expected.contains("CR8 value 0-15"));
        assert!(err("route 1 vector=1 order=high\n")
            .expected
            .contains("order=high-first|low-first"));
    }

    #[test]
    fn multi_cpu_statements_parse_and_round_trip() {
        let text = "config apic=x2apic cpus=4 apic-ids=0,1,16,17 ap-start=sipi\n\
                    handler 0x40: eoi\nhandler 0x40@2: snapshot; eoi\nhandler 0x41#2@3: nop\n\
                    ipi init all-but-self\nipi dest=0x10 startup\ncpu 2: ipi vector=0x40 dest=0x10003 logical\n\
                    cpu 3: sti\nassert 3\nipi vector=0x41 dest=0xffffffff lowest level\nipi nmi self\n";
        let s = parse(text).unwrap();
        assert_eq!(s.config.cpus, 4);
        assert_eq!(s.config.apic_ids[..4], [0, 1, 16, 17]);
        assert_eq!(s.config.ap_start, ApStart::Sipi);
        assert_eq!(s.op_cpus, [0, 0, 2, 3, 0, 0, 0]);
        assert_eq!(s.cpu_of(2), 2);
        assert_eq!(s.cpu_of(99), 0);
        assert_eq!(s.handler_body_on(2, 0x40, 1), &[Op::Snapshot, Op::Eoi]);
        assert_eq!(s.handler_body_on(1, 0x40, 1), &[Op::Eoi]);
        assert_eq!(s.handler_body_on(3, 0x41, 2), &[Op::Nop]);
        assert_eq!(s.handler_body_on(3, 0x41, 1), &[Op::Eoi]);
        let Op::Ipi(ipi) = s.ops[2] else { panic!() };
        assert_eq!(
            (ipi.dest, ipi.icr_low()),
            (0x10003, 0x40 | 1 << 11 | 1 << 14)
        );
        let Op::Ipi(init) = s.ops[0] else { panic!() };
        assert_eq!(init.icr_low(), 5 << 8 | 1 << 14 | 3 << 18);
        assert_eq!(print(&s), text);
        assert_eq!(parse(&print(&s)).unwrap(), s);
        // `cpu 0:` is the plain op: the canonical form drops it.
        let s = parse("config cpus=2\ncpu 0: nop\ncpu 0:nop\n").unwrap();
        assert!(s.op_cpus.is_empty());
        assert_eq!(print(&s), "config cpus=2\nnop\nnop\n");
        assert!(!s.uses_smp() || s.is_multi_cpu());
        // A scenario without the extension is unchanged.
        assert!(!parse("nop\n").unwrap().uses_smp());
    }

    #[test]
    fn multi_cpu_errors_name_what_and_where() {
        let e = err("config cpus=2\ncpu 2: nop\n");
        assert_eq!((e.line, e.column), (2, 5));
        assert!(
            e.expected.contains("below `config cpus=N`"),
            "{}",
            e.expected
        );
        let e = err("handler 0x20@1: eoi\nnop\n");
        assert_eq!((e.line, e.column), (1, 14));
        assert!(
            e.expected.contains("below `config cpus=N`"),
            "{}",
            e.expected
        );
        let e = err("config cpus=9\n");
        assert_eq!((e.line, e.column), (1, 13));
        assert!(e.expected.contains("CPU count 1-8"), "{}", e.expected);
        assert!(err("config cpus=0\n").expected.contains("CPU count 1-8"));
        let e = err("config cpus=3 apic-ids=0,1\n");
        assert_eq!(e.column, 15);
        assert!(e.expected.contains("one APIC ID per CPU"), "{}", e.expected);
        assert!(err("config cpus=2 apic-ids=0,0xff\n")
            .expected
            .contains("APIC ID 0-0xfe"));
        assert!(err("config ap-start=bios\n")
            .expected
            .contains("ap-start=host"));
        let e = err("config cpus=2\ncpu 1: assert 3\n");
        assert!(
            e.expected.contains("host ops are done by the VMM"),
            "{}",
            e.expected
        );
        assert!(err("cpu 1 nop\n").expected.contains("`cpu K: OP`"));
        assert!(err("config cpus=2\ncpu 1:\n")
            .expected
            .contains("an op after"));
        assert!(err("handler 0x20: cpu 1: nop\n")
            .expected
            .contains("runs on the CPU that took the interrupt"));
        let e = err("ipi vector=0x40 dest=0x100\n");
        assert_eq!((e.line, e.column), (1, 22));
        assert!(
            e.expected.contains("needs `config apic=x2apic`"),
            "{}",
            e.expected
        );
        assert!(parse("config apic=x2apic\nipi vector=0x40 dest=0x100\n").is_ok());
        assert!(err("ipi dest=1\n").expected.contains("needs a vector"));
        assert!(err("ipi nmi vector=2\n").expected.contains("no `vector=`"));
        assert!(err("ipi init level\n").expected.contains("`level` only"));
        assert!(err("ipi vector=1 self all\n")
            .expected
            .contains("one shorthand option"));
    }

    #[test]
    fn hash_after_whitespace_is_a_comment_even_in_handlers() {
        let s = parse("handler 0x20#3: eoi # not a delivery count\n# whole line\n").unwrap();
        assert_eq!(s.handlers.len(), 1);
        assert_eq!(s.handler_body(0x20, 3), &[Op::Eoi]);
    }

    #[test]
    fn never_panics_on_odd_bytes() {
        for text in [
            "handler",
            "handler :",
            "handler #:",
            "handler 1#:",
            "route",
            "msi",
            "config",
            "é#é:é",
            "handler é: nop",
            "\u{0}",
        ] {
            let _ = parse(text);
        }
    }

    // ---- PIC (issue 15)
    #[test]
    fn pic_ops_parse_print_canonically_and_refuse_bad_ports_and_lines() {
        let s =
            parse("pic-write 32 17\npic-read 0x4D1\nisa-assert 15\nisa-deassert 0\nisa-pulse 9\n")
                .unwrap();
        assert_eq!(
            s.ops[0],
            Op::PicWrite {
                port: PicPort::MASTER_COMMAND,
                value: 0x11
            }
        );
        assert_eq!(s.ops[1], Op::PicRead(PicPort::ELCR2));
        assert_eq!(
            s.ops[2],
            Op::Host(HostOp::IsaAssert(IsaLine::new(15).unwrap()))
        );
        assert_eq!(
            print(&s),
            "pic-write 0x20 0x11\npic-read 0x4d1\nisa-assert 15\nisa-deassert 0\nisa-pulse 9\n"
        );
        assert!(s.uses_pic());
        let e = err("pic-write 0x22 1\n");
        assert_eq!((e.line, e.column), (1, 11));
        assert!(e.expected.contains("a PIC port"), "{e}");
        let e = err("isa-assert 2\n");
        assert!(e.expected.contains("other than 2"), "{e}");
        let e = err("isa-pulse 16\n");
        assert!(e.expected.contains("ISA line"), "{e}");
        let e = err("pic-write 0x20 256\n");
        assert!(e.expected.contains("a byte 0-255"), "{e}");
        assert!(err("cpu 0: isa-pulse 1\nconfig cpus=2\n")
            .expected
            .contains("host ops"));
    }
}
