//! The local APIC timer (Intel SDM vol. 3A §11.5.4 "APIC Timer" and
//! §11.5.4.1 "TSC-Deadline Mode"), without a clock.
//!
//! Registers: the LVT timer entry (0x320: vector 7:0, mask 16, timer mode
//! 18:17), the divide configuration (0x3E0, bits 3 and 1:0), the initial
//! count (0x380), the current count (0x390, read-only) and the
//! IA32_TSC_DEADLINE MSR (0x6E0).
//!
//! The model has no time: a count in progress reaches zero only when the
//! machine is told that time passed ([`Timer::elapse`]), which the scenario
//! format does at its waits (`timer-wait max=N`, and a `hlt` that nothing
//! else wakes; docs/scenario-format.md "The LAPIC timer"). A wait of
//! `limit` nanoseconds expires a count whose whole period is at most
//! `limit` at the nominal bus clock of one count per nanosecond (what KVM's
//! and QEMU's local APICs use), and a TSC deadline at most `limit` TSC
//! cycles ahead (a TSC of at least 1 GHz); nothing expires in part. The
//! current count reads the initial count while a count is in progress (no
//! time has passed inside an op) and 0 otherwise, so a read tells zero from
//! non-zero, which is all the oracle compares.

use crate::rules::Rule;

/// The IA32_TSC_DEADLINE MSR (SDM §11.5.4.1).
pub const MSR_TSC_DEADLINE: u32 = 0x6e0;

/// LVT timer bits 18:17 (SDM Figure 11-8).
pub const LVT_TIMER_MODE_SHIFT: u32 = 17;

/// The timer mode of an LVT timer value (bits 18:17).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TimerMode {
    /// 00b: count down once from the initial count.
    OneShot,
    /// 01b: reload the initial count at each expiry.
    Periodic,
    /// 10b: expire when the TSC reaches IA32_TSC_DEADLINE.
    TscDeadline,
    /// 11b: reserved (the model's timer does nothing in it).
    Reserved,
}

impl TimerMode {
    pub fn of(lvt: u32) -> TimerMode {
        match (lvt >> LVT_TIMER_MODE_SHIFT) & 3 {
            0 => TimerMode::OneShot,
            1 => TimerMode::Periodic,
            2 => TimerMode::TscDeadline,
            _ => TimerMode::Reserved,
        }
    }

    /// The LVT bits 18:17 of this mode.
    pub fn bits(self) -> u32 {
        (match self {
            TimerMode::OneShot => 0,
            TimerMode::Periodic => 1,
            TimerMode::TscDeadline => 2,
            TimerMode::Reserved => 3,
        }) << LVT_TIMER_MODE_SHIFT
    }
}

/// SDM Figure 11-10: the divide configuration's bits 3 and 1:0 select a
/// divisor; 1011b is divide by 1, 0000b by 2, ... 1010b by 128.
pub fn divisor(divide_register: u32) -> u64 {
    let code = ((divide_register >> 1) & 4) | (divide_register & 3);
    if code == 7 {
        1
    } else {
        2 << code
    }
}

/// The divide configuration value of a divisor (1, 2, 4, ... 128), the
/// inverse of [`divisor`].
pub fn divide_register(divisor: u32) -> Option<u32> {
    if !divisor.is_power_of_two() || divisor > 128 {
        return None;
    }
    let code = if divisor == 1 {
        7
    } else {
        divisor.trailing_zeros() - 1
    };
    Some((code & 4) << 1 | (code & 3))
}

/// The timer's state besides its LVT entry (which the local APIC holds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Timer {
    initial: u32,
    divide: u32,
    /// A one-shot or periodic count in progress.
    counting: bool,
    /// IA32_TSC_DEADLINE (0: disarmed), in the model's TSC.
    deadline: u64,
    /// The model's TSC: it moves only when a wait lets a deadline expire.
    tsc: u64,
}

/// What [`Timer::elapse`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expiry {
    /// The rule of the mode that expired.
    pub rule: Rule,
}

/// Where the model's TSC starts: any value; a deadline below it is past.
pub const MODEL_TSC_START: u64 = 1 << 32;

impl Timer {
    pub fn new() -> Timer {
        Timer {
            tsc: MODEL_TSC_START,
            ..Timer::default()
        }
    }

    pub fn initial(&self) -> u32 {
        self.initial
    }

    pub fn divide(&self) -> u32 {
        self.divide
    }

    /// The model's TSC (what `tsc-deadline now` and `+N` are relative to).
    pub fn tsc(&self) -> u64 {
        self.tsc
    }

    /// Whether something will expire at a long enough wait.
    pub fn armed(&self, mode: TimerMode) -> bool {
        match mode {
            TimerMode::OneShot | TimerMode::Periodic => self.counting,
            TimerMode::TscDeadline => self.deadline != 0,
            TimerMode::Reserved => false,
        }
    }

    /// SDM §11.5.4: the divide configuration (bits 3 and 1:0 writable).
    pub fn write_divide(&mut self, value: u32) {
        self.divide = value & 0xb;
    }

    /// SDM §11.5.4: "A write to the initial-count register starts the
    /// timer" (a write while it counts restarts it from the new count);
    /// "a write of 0 to the initial-count register effectively stops the
    /// local APIC timer, in both one-shot and periodic mode".
    /// §11.5.4.1: in TSC-deadline mode the write is ignored.
    pub fn write_initial(&mut self, mode: TimerMode, value: u32) -> Rule {
        if mode == TimerMode::TscDeadline {
            return Rule::TimerTscDeadline;
        }
        self.initial = value;
        self.counting = value != 0;
        Rule::TimerInitialCountRestarts
    }

    /// SDM §11.5.4: the current count counts down from the initial count
    /// to 0 (and, periodic, reloads); §11.5.4.1: it reads 0 in
    /// TSC-deadline mode. The model has no time: the initial count while a
    /// count is in progress, 0 otherwise.
    pub fn current(&self, mode: TimerMode) -> u32 {
        match mode {
            TimerMode::OneShot | TimerMode::Periodic if self.counting => self.initial,
            _ => 0,
        }
    }

    /// A write of the LVT timer entry that changes the mode from `old` to
    /// `new`. SDM §11.5.4: changing between one-shot and periodic "does not
    /// start the timer" (a count in progress goes on; kvm-unit-tests'
    /// `test_apic_change_mode` holds this); §11.5.4.1: "transitioning
    /// between TSC-deadline mode and other timer modes also disarms the
    /// timer" (the count stops, IA32_TSC_DEADLINE is cleared).
    pub fn change_mode(&mut self, old: TimerMode, new: TimerMode) -> Option<Rule> {
        if old == new {
            return None;
        }
        if (old == TimerMode::TscDeadline) != (new == TimerMode::TscDeadline) {
            self.counting = false;
            self.deadline = 0;
        }
        Some(Rule::TimerModeSwitch)
    }

    /// SDM §11.5.4.1: a write of IA32_TSC_DEADLINE in TSC-deadline mode
    /// arms the timer (0 disarms it); "if software writes a value that is
    /// in the past" (at or below the TSC) the timer expires at once, which
    /// the caller delivers (returned `Some`). In any other mode the write
    /// is ignored.
    pub fn write_deadline(&mut self, mode: TimerMode, value: u64) -> Option<Expiry> {
        if mode != TimerMode::TscDeadline {
            return None;
        }
        self.deadline = value;
        if value != 0 && value <= self.tsc {
            self.deadline = 0;
            return Some(Expiry {
                rule: Rule::TimerTscDeadline,
            });
        }
        None
    }

    /// Deviation timer-tsc-deadline/late: [`Timer::write_deadline`], but a
    /// deadline at or below the TSC is only stored; the next
    /// [`Timer::elapse`] (of any bound) expires it.
    pub fn write_deadline_late(&mut self, mode: TimerMode, value: u64) {
        if mode == TimerMode::TscDeadline {
            self.deadline = value;
        }
    }

    /// SDM §11.5.4.1: IA32_TSC_DEADLINE reads its value in TSC-deadline
    /// mode (0 once it expired: the timer disarms itself and clears it),
    /// and 0 in any other mode.
    pub fn read_deadline(&self, mode: TimerMode) -> u64 {
        if mode == TimerMode::TscDeadline {
            self.deadline
        } else {
            0
        }
    }

    /// Time passes, up to `limit` ns (a wait's bound). A one-shot count
    /// whose period (initial count x divisor) fits expires once and stops
    /// (§11.5.4: "the timer generates an interrupt ... and stays at 0
    /// until reprogrammed"); a periodic one expires once and reloads
    /// (once per wait, however many periods fit: the wait ends at the
    /// first); a TSC deadline at most `limit` cycles ahead expires and is
    /// cleared (§11.5.4.1). The caller raises the interrupt unless the
    /// LVT entry is masked (§11.5.1: the mask inhibits the interrupt, the
    /// timer still counts).
    pub fn elapse(&mut self, mode: TimerMode, limit: u64) -> Option<Expiry> {
        match mode {
            TimerMode::OneShot | TimerMode::Periodic if self.counting => {
                let period = self.initial as u64 * divisor(self.divide);
                if period > limit {
                    return None;
                }
                if mode == TimerMode::OneShot {
                    self.counting = false;
                    return Some(Expiry {
                        rule: Rule::TimerOneShot,
                    });
                }
                Some(Expiry {
                    rule: Rule::TimerPeriodic,
                })
            }
            TimerMode::TscDeadline if self.deadline != 0 => {
                let ahead = self.deadline.saturating_sub(self.tsc);
                if ahead > limit {
                    return None;
                }
                self.tsc = self.tsc.max(self.deadline);
                self.deadline = 0;
                Some(Expiry {
                    rule: Rule::TimerTscDeadline,
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_divide_configuration_encodes_the_divisors_of_figure_11_10() {
        // SDM Figure 11-10: 0000b 2, 0001b 4, 0010b 8, 0011b 16, 1000b 32,
        // 1001b 64, 1010b 128, 1011b 1.
        let table = [
            (0x0, 2),
            (0x1, 4),
            (0x2, 8),
            (0x3, 16),
            (0x8, 32),
            (0x9, 64),
            (0xa, 128),
            (0xb, 1),
        ];
        for (register, d) in table {
            assert_eq!(divisor(register), d, "{register:#x}");
            assert_eq!(divide_register(d as u32), Some(register), "{d}");
            // Bit 2 is reserved: it does not change the divisor.
            assert_eq!(divisor(register | 4), d);
        }
        assert_eq!(divide_register(3), None);
        assert_eq!(divide_register(256), None);
    }

    #[test]
    fn a_one_shot_expires_once_at_a_long_enough_wait_and_stops() {
        // SDM §11.5.4: one-shot counts down once; the current count stays 0.
        let mut t = Timer::new();
        t.write_divide(0xb);
        t.write_initial(TimerMode::OneShot, 1000);
        assert_eq!(t.current(TimerMode::OneShot), 1000);
        assert_eq!(t.elapse(TimerMode::OneShot, 999), None, "too short a wait");
        assert_eq!(
            t.elapse(TimerMode::OneShot, 1000).map(|e| e.rule),
            Some(Rule::TimerOneShot)
        );
        assert_eq!(t.current(TimerMode::OneShot), 0);
        assert_eq!(t.elapse(TimerMode::OneShot, u64::MAX), None, "once");
        assert_eq!(t.initial(), 1000, "the initial count stays");
    }

    #[test]
    fn the_divisor_lengthens_the_period() {
        // SDM §11.5.4: the count decrements at the bus clock divided by
        // the divide configuration's divisor.
        let mut t = Timer::new();
        t.write_divide(0xa); // 128
        t.write_initial(TimerMode::OneShot, 10);
        assert_eq!(t.elapse(TimerMode::OneShot, 1279), None);
        assert!(t.elapse(TimerMode::OneShot, 1280).is_some());
    }

    #[test]
    fn a_periodic_count_expires_at_every_wait_and_reloads() {
        // SDM §11.5.4: periodic mode reloads the initial count.
        let mut t = Timer::new();
        t.write_divide(0xb);
        t.write_initial(TimerMode::Periodic, 500);
        for _ in 0..3 {
            assert_eq!(
                t.elapse(TimerMode::Periodic, 1000).map(|e| e.rule),
                Some(Rule::TimerPeriodic)
            );
            assert_eq!(t.current(TimerMode::Periodic), 500);
        }
    }

    #[test]
    fn writing_the_initial_count_restarts_and_zero_stops() {
        // SDM §11.5.4: a write of the initial count (re)starts the timer;
        // a write of 0 stops it, in one-shot and periodic mode.
        for mode in [TimerMode::OneShot, TimerMode::Periodic] {
            let mut t = Timer::new();
            t.write_divide(0xb);
            t.write_initial(mode, 5000);
            t.write_initial(mode, 100);
            assert_eq!(t.current(mode), 100, "restarted from the new count");
            assert!(t.elapse(mode, 100).is_some(), "{mode:?}");
            t.write_initial(mode, 0);
            assert_eq!(t.current(mode), 0);
            assert!(!t.armed(mode));
            assert_eq!(t.elapse(mode, u64::MAX), None, "{mode:?} stopped");
        }
    }

    #[test]
    fn one_shot_to_periodic_keeps_counting_and_tsc_deadline_transitions_disarm() {
        // SDM §11.5.4: a mode change between one-shot and periodic does not
        // start (nor stop) the timer; §11.5.4.1: a transition to or from
        // TSC-deadline mode disarms it.
        let mut t = Timer::new();
        t.write_divide(0xb);
        t.write_initial(TimerMode::OneShot, 100);
        assert_eq!(
            t.change_mode(TimerMode::OneShot, TimerMode::Periodic),
            Some(Rule::TimerModeSwitch)
        );
        assert_eq!(t.current(TimerMode::Periodic), 100, "still counting");
        t.change_mode(TimerMode::Periodic, TimerMode::TscDeadline);
        assert_eq!(t.current(TimerMode::TscDeadline), 0);
        t.change_mode(TimerMode::TscDeadline, TimerMode::OneShot);
        assert!(!t.armed(TimerMode::OneShot), "disarmed by the transition");
        // A deadline armed, then a transition out of TSC-deadline mode.
        t.change_mode(TimerMode::OneShot, TimerMode::TscDeadline);
        t.write_deadline(TimerMode::TscDeadline, t.tsc() + 50);
        assert!(t.armed(TimerMode::TscDeadline));
        t.change_mode(TimerMode::TscDeadline, TimerMode::Periodic);
        t.change_mode(TimerMode::Periodic, TimerMode::TscDeadline);
        assert_eq!(t.read_deadline(TimerMode::TscDeadline), 0, "cleared");
    }

    #[test]
    fn the_tsc_deadline_msr_works_only_in_tsc_deadline_mode() {
        // SDM §11.5.4.1: outside TSC-deadline mode writes are ignored and
        // reads return 0; in it, the initial count is ignored and the
        // current count reads 0.
        let mut t = Timer::new();
        assert_eq!(t.write_deadline(TimerMode::OneShot, t.tsc() + 10), None);
        assert_eq!(t.read_deadline(TimerMode::OneShot), 0);
        assert_eq!(t.read_deadline(TimerMode::TscDeadline), 0, "ignored");
        t.write_initial(TimerMode::TscDeadline, 1234);
        assert_eq!(t.initial(), 0, "ignored in TSC-deadline mode");
        let deadline = t.tsc() + 10;
        t.write_deadline(TimerMode::TscDeadline, deadline);
        assert_eq!(t.read_deadline(TimerMode::TscDeadline), deadline);
        assert_eq!(t.read_deadline(TimerMode::OneShot), 0);
        assert_eq!(t.elapse(TimerMode::TscDeadline, 9), None);
        assert_eq!(
            t.elapse(TimerMode::TscDeadline, 10).map(|e| e.rule),
            Some(Rule::TimerTscDeadline)
        );
        assert_eq!(t.read_deadline(TimerMode::TscDeadline), 0, "cleared");
        assert_eq!(t.elapse(TimerMode::TscDeadline, u64::MAX), None);
    }

    #[test]
    fn a_deadline_in_the_past_expires_at_the_write_and_zero_disarms() {
        // SDM §11.5.4.1: the interrupt comes when the TSC reaches the
        // deadline, so one at or below it comes at once; 0 disarms.
        let mut t = Timer::new();
        let now = t.tsc();
        assert!(t.write_deadline(TimerMode::TscDeadline, now).is_some());
        assert_eq!(t.read_deadline(TimerMode::TscDeadline), 0);
        t.write_deadline(TimerMode::TscDeadline, now + 5);
        t.write_deadline(TimerMode::TscDeadline, 0);
        assert!(!t.armed(TimerMode::TscDeadline));
        assert_eq!(t.elapse(TimerMode::TscDeadline, u64::MAX), None);
    }

    #[test]
    fn the_reserved_mode_never_expires() {
        let mut t = Timer::new();
        t.write_initial(TimerMode::Reserved, 1);
        assert_eq!(t.elapse(TimerMode::Reserved, u64::MAX), None);
        assert_eq!(TimerMode::of(3 << 17), TimerMode::Reserved);
        assert_eq!(
            TimerMode::of(TimerMode::Periodic.bits() | 0xff),
            TimerMode::Periodic
        );
    }
}
