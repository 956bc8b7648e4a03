//! [`Hv`] over the real Hypervisor.framework (Intel Macs, macOS 12+).

use std::time::Duration;

use hypervisor_framework_sys as hv;

use super::api::{ApicException, Hv, HvError, HvExt, HvResult, Interrupter, RunEnd};

/// The process's one VM (Hypervisor.framework allows one per process).
#[derive(Debug, Default)]
pub struct Framework {
    created: bool,
    /// The live vCPUs (each owned by the thread that created it), until
    /// `hv_vcpu_destroy`.
    vcpus: Vec<u32>,
    /// Each vCPU's APIC state right after it was created.
    initial_apic: Vec<(u32, hv::hv_apic_state_ext_t)>,
    /// The IOAPIC's state right after the first vCPU was created.
    initial_ioapic: Option<hv::hv_ioapic_state_ext_t>,
}

impl Framework {
    fn initial_apic(&self, vcpu: u32, call: &'static str) -> HvResult<hv::hv_apic_state_ext_t> {
        self.initial_apic
            .iter()
            .find(|(v, _)| *v == vcpu)
            .map(|(_, apic)| *apic)
            .ok_or(HvError {
                call,
                code: hv::HV_ERROR,
            })
    }
}

fn check(call: &'static str, code: hv::hv_return_t) -> HvResult<()> {
    if code == hv::HV_SUCCESS {
        Ok(())
    } else {
        Err(HvError { call, code })
    }
}

impl Drop for Framework {
    /// What the VMM did not tear down itself: the vCPUs (this thread owns
    /// the first; the VMM destroys the others on theirs), then the VM; a
    /// failure is logged, Drop cannot return it.
    fn drop(&mut self) {
        let vcpus: Vec<_> = self.vcpus.clone();
        let mut results: Vec<HvResult<()>> =
            vcpus.into_iter().map(|v| self.destroy_vcpu(v)).collect();
        if self.created {
            results.push(self.destroy_vm());
        }
        for failure in results.into_iter().filter_map(Result::err) {
            eprintln!("irqdiff: tearing the Hypervisor.framework VM down: {failure}");
        }
    }
}

impl Hv for Framework {
    fn create_vm(&mut self, ram: *mut u8, size: usize) -> HvResult<()> {
        // SAFETY: plain call; the flag is a documented option.
        check("hv_vm_create", unsafe {
            hv::hv_vm_create(hv::HV_VM_ACCEL_APIC)
        })?;
        self.created = true;
        let flags = hv::HV_MEMORY_READ | hv::HV_MEMORY_WRITE | hv::HV_MEMORY_EXEC;
        // SAFETY: `ram` is page-aligned host memory of `size` bytes that the
        // caller keeps alive for the VM's lifetime.
        check("hv_vm_map", unsafe {
            hv::hv_vm_map(ram.cast(), 0, size, flags)
        })
    }
    fn create_vcpu(&mut self) -> HvResult<u32> {
        let mut vcpu = 0;
        // SAFETY: `vcpu` is a valid out-pointer; the vCPU belongs to this thread.
        check("hv_vcpu_create", unsafe {
            hv::hv_vcpu_create(&mut vcpu, hv::HV_VCPU_DEFAULT)
        })?;
        self.vcpus.push(vcpu);
        let mut apic = hv::hv_apic_state_ext_t {
            version: hv::HV_APIC_STATE_EXT_VER,
            state: [0; 30],
        };
        // SAFETY: `apic` is a valid, versioned out-buffer of the right size.
        check("hv_vcpu_apic_get_state", unsafe {
            hv::hv_vcpu_apic_get_state(vcpu, &mut apic)
        })?;
        let mut ioapic = hv::hv_ioapic_state_ext_t {
            version: hv::HV_IOAPIC_STATE_EXT_VER,
            state: hv::hv_ioapic_state {
                rtbl: [0; 32],
                irr: 0,
                ioa_id: 0,
                ioregsel: 0,
            },
        };
        // SAFETY: as above.
        check("hv_vm_ioapic_get_state", unsafe {
            hv::hv_vm_ioapic_get_state(&mut ioapic)
        })?;
        self.initial_apic.retain(|(v, _)| *v != vcpu);
        self.initial_apic.push((vcpu, apic));
        self.initial_ioapic.get_or_insert(ioapic);
        Ok(vcpu)
    }
    fn reset_irqchip(&mut self, vcpu: u32) -> HvResult<()> {
        let apic = self.initial_apic(vcpu, "reset_irqchip before hv_vcpu_create")?;
        let Some(ioapic) = self.initial_ioapic else {
            return Err(HvError {
                call: "reset_irqchip before hv_vcpu_create",
                code: hv::HV_ERROR,
            });
        };
        // SAFETY: states captured from this VM; the vCPU is not running
        // (the header asks for a quiescent VM).
        check("hv_vcpu_apic_put_state", unsafe {
            hv::hv_vcpu_apic_put_state(vcpu, &apic)
        })?;
        // SAFETY: as above.
        check("hv_vm_ioapic_put_state", unsafe {
            hv::hv_vm_ioapic_put_state(&ioapic)
        })?;
        self.set_apic_address(vcpu, 0xfee0_0000)
    }
    fn set_apic_address(&mut self, vcpu: u32, gpa: u64) -> HvResult<()> {
        // SAFETY: plain call on this thread's vCPU.
        check("hv_vmx_vcpu_set_apic_address", unsafe {
            hv::hv_vmx_vcpu_set_apic_address(vcpu, gpa)
        })
    }
    fn apic_ctrl(&mut self, vcpu: u32, ctrl: u64) -> HvResult<()> {
        // SAFETY: plain call on this thread's vCPU.
        check("hv_vcpu_apic_ctrl", unsafe {
            hv::hv_vcpu_apic_ctrl(vcpu, ctrl)
        })
    }
    fn read_register(&mut self, vcpu: u32, reg: u32) -> HvResult<u64> {
        let mut v = 0;
        // SAFETY: `v` is a valid out-pointer.
        check("hv_vcpu_read_register", unsafe {
            hv::hv_vcpu_read_register(vcpu, reg, &mut v)
        })?;
        Ok(v)
    }
    fn write_register(&mut self, vcpu: u32, reg: u32, value: u64) -> HvResult<()> {
        // SAFETY: plain call on this thread's vCPU.
        check("hv_vcpu_write_register", unsafe {
            hv::hv_vcpu_write_register(vcpu, reg, value)
        })
    }
    fn read_vmcs(&mut self, vcpu: u32, field: u32) -> HvResult<u64> {
        let mut v = 0;
        // SAFETY: `v` is a valid out-pointer.
        check("hv_vmx_vcpu_read_vmcs", unsafe {
            hv::hv_vmx_vcpu_read_vmcs(vcpu, field, &mut v)
        })?;
        Ok(v)
    }
    fn write_vmcs(&mut self, vcpu: u32, field: u32, value: u64) -> HvResult<()> {
        // SAFETY: plain call on this thread's vCPU.
        check("hv_vmx_vcpu_write_vmcs", unsafe {
            hv::hv_vmx_vcpu_write_vmcs(vcpu, field, value)
        })
    }
    fn write_msr(&mut self, vcpu: u32, msr: u32, value: u64) -> HvResult<()> {
        // SAFETY: plain call on this thread's vCPU.
        check("hv_vcpu_write_msr", unsafe {
            hv::hv_vcpu_write_msr(vcpu, msr, value)
        })
    }
    fn run_until(&mut self, vcpu: u32, timeout: Duration) -> HvResult<RunEnd> {
        // The deadline is in mach absolute time; nanoseconds on Intel Macs.
        extern "C" {
            fn mach_absolute_time() -> u64;
        }
        // SAFETY: mach_absolute_time has no preconditions.
        let deadline = unsafe { mach_absolute_time() } + timeout.as_nanos() as u64;
        // SAFETY: plain call on this thread's vCPU.
        check("hv_vcpu_run_until", unsafe {
            hv::hv_vcpu_run_until(vcpu, deadline)
        })?;
        let reason = self.read_vmcs(vcpu, hv::VMCS_RO_EXIT_REASON)? as u32 & 0xffff;
        Ok(if reason == hv::VMX_REASON_VMX_TIMER_EXPIRED {
            RunEnd::Deadline
        } else {
            RunEnd::Exit
        })
    }
    fn exit_info(&mut self, vcpu: u32) -> HvResult<u32> {
        let mut code = 0;
        // SAFETY: `code` is a valid out-pointer.
        check("hv_vcpu_exit_info", unsafe {
            hv::hv_vcpu_exit_info(vcpu, &mut code)
        })?;
        Ok(code)
    }
    fn exit_ioapic_eoi(&mut self, vcpu: u32) -> HvResult<u8> {
        let mut vec = 0;
        // SAFETY: `vec` is a valid out-pointer.
        check("hv_vcpu_exit_ioapic_eoi", unsafe {
            hv::hv_vcpu_exit_ioapic_eoi(vcpu, &mut vec)
        })?;
        Ok(vec)
    }
    fn exit_inject_excp(&mut self, vcpu: u32) -> HvResult<ApicException> {
        let (mut vector, mut valid, mut code, mut restart) = (0u8, false, 0u32, false);
        // SAFETY: four valid out-pointers; called on the owning thread.
        check("hv_vcpu_exit_inject_excp", unsafe {
            hv::hv_vcpu_exit_inject_excp(vcpu, &mut vector, &mut valid, &mut code, &mut restart)
        })?;
        Ok(ApicException {
            vector,
            error_code: valid.then_some(code),
            restart,
        })
    }
    fn exit_apic_access_read(&mut self, vcpu: u32) -> HvResult<u32> {
        let mut v = 0;
        // SAFETY: `v` is a valid out-pointer.
        check("hv_vcpu_exit_apic_access_read", unsafe {
            hv::hv_vcpu_exit_apic_access_read(vcpu, &mut v)
        })?;
        Ok(v)
    }
    fn apic_read(&mut self, vcpu: u32, offset: u32) -> HvResult<u32> {
        let mut v = 0;
        // SAFETY: `v` is a valid out-pointer.
        check("hv_vcpu_apic_read", unsafe {
            hv::hv_vcpu_apic_read(vcpu, offset, &mut v)
        })?;
        Ok(v)
    }
    fn apic_write(&mut self, vcpu: u32, offset: u32, value: u32) -> HvResult<bool> {
        let mut no_side_effect = true;
        // SAFETY: `no_side_effect` is a valid out-pointer.
        check("hv_vcpu_apic_write", unsafe {
            hv::hv_vcpu_apic_write(vcpu, offset, value, &mut no_side_effect)
        })?;
        Ok(no_side_effect)
    }
    fn lapic_msi(&mut self, address: u64, data: u64) -> HvResult<()> {
        // SAFETY: plain VM-wide call.
        check("hv_vm_lapic_msi", unsafe {
            hv::hv_vm_lapic_msi(address, data)
        })
    }
    fn send_ioapic_intr(&mut self, entry: u64) -> HvResult<()> {
        // SAFETY: plain VM-wide call.
        check("hv_vm_send_ioapic_intr", unsafe {
            hv::hv_vm_send_ioapic_intr(entry)
        })
    }
    fn ioapic_read(&mut self, gpa: u64) -> HvResult<u32> {
        let mut v = 0;
        // SAFETY: `v` is a valid out-pointer.
        check("hv_vm_ioapic_read", unsafe {
            hv::hv_vm_ioapic_read(gpa, &mut v)
        })?;
        Ok(v)
    }
    fn ioapic_write(&mut self, gpa: u64, value: u32) -> HvResult<()> {
        // SAFETY: plain VM-wide call.
        check("hv_vm_ioapic_write", unsafe {
            hv::hv_vm_ioapic_write(gpa, value)
        })
    }
    fn ioapic_assert_irq(&mut self, pin: i32) -> HvResult<()> {
        // SAFETY: plain VM-wide call.
        check("hv_vm_ioapic_assert_irq", unsafe {
            hv::hv_vm_ioapic_assert_irq(pin)
        })
    }
    fn ioapic_deassert_irq(&mut self, pin: i32) -> HvResult<()> {
        // SAFETY: plain VM-wide call.
        check("hv_vm_ioapic_deassert_irq", unsafe {
            hv::hv_vm_ioapic_deassert_irq(pin)
        })
    }
    fn ioapic_pulse_irq(&mut self, pin: i32) -> HvResult<()> {
        // SAFETY: plain VM-wide call.
        check("hv_vm_ioapic_pulse_irq", unsafe {
            hv::hv_vm_ioapic_pulse_irq(pin)
        })
    }
    fn atpic_port_write(&mut self, port: i32, value: u8) -> HvResult<()> {
        // SAFETY: plain VM-wide call.
        check("hv_vm_atpic_port_write", unsafe {
            hv::hv_vm_atpic_port_write(port, value)
        })
    }
}

impl HvExt for Framework {
    fn exit_init_ap(&mut self, vcpu: u32, count: u32) -> HvResult<Vec<bool>> {
        let mut targets = vec![false; count as usize];
        // SAFETY: `targets` is valid for `count` writes; called on the
        // owning thread.
        check("hv_vcpu_exit_init_ap", unsafe {
            hv::hv_vcpu_exit_init_ap(vcpu, targets.as_mut_ptr(), count)
        })?;
        Ok(targets)
    }
    fn exit_startup_ap(&mut self, vcpu: u32, count: u32) -> HvResult<(Vec<bool>, u64)> {
        let mut targets = vec![false; count as usize];
        let mut ap_rip = 0u64;
        // SAFETY: `targets` is valid for `count` writes and `ap_rip` for
        // one; called on the owning thread.
        check("hv_vcpu_exit_startup_ap", unsafe {
            hv::hv_vcpu_exit_startup_ap(vcpu, targets.as_mut_ptr(), count, &mut ap_rip)
        })?;
        Ok((targets, ap_rip))
    }
    fn read_capability(&mut self, field: u32) -> HvResult<u64> {
        let mut v = 0;
        // SAFETY: `v` is a valid out-pointer; `field` is a hv_vmx_capability_t.
        check("hv_vmx_read_capability", unsafe {
            hv::hv_vmx_read_capability(field, &mut v)
        })?;
        Ok(v)
    }
    fn read_msr(&mut self, vcpu: u32, msr: u32) -> HvResult<u64> {
        let mut v = 0;
        // SAFETY: `v` is a valid out-pointer; called on the owning thread.
        check("hv_vcpu_read_msr", unsafe {
            hv::hv_vcpu_read_msr(vcpu, msr, &mut v)
        })?;
        Ok(v)
    }
    fn run_forever(&mut self, vcpu: u32) -> HvResult<RunEnd> {
        // SAFETY: plain call on this thread's vCPU.
        check("hv_vcpu_run_until(HV_DEADLINE_FOREVER)", unsafe {
            hv::hv_vcpu_run_until(vcpu, hv::HV_DEADLINE_FOREVER)
        })?;
        Ok(RunEnd::Exit)
    }
    fn interrupter(&mut self, vcpu: u32) -> HvResult<Interrupter> {
        Ok(std::sync::Arc::new(move || {
            let mut id = vcpu;
            // SAFETY: `id` is one valid vCPU id for the count of 1;
            // hv_vcpu_interrupt may be called from any thread (hv.h).
            check("hv_vcpu_interrupt", unsafe {
                hv::hv_vcpu_interrupt(&mut id, 1)
            })
        }))
    }
    fn reset_apic(&mut self, vcpu: u32) -> HvResult<()> {
        let apic = self.initial_apic(vcpu, "reset_apic before hv_vcpu_create")?;
        // SAFETY: a state captured from this vCPU; it is not running.
        check("hv_vcpu_apic_put_state", unsafe {
            hv::hv_vcpu_apic_put_state(vcpu, &apic)
        })?;
        self.set_apic_address(vcpu, 0xfee0_0000)
    }
    fn destroy_vcpu(&mut self, vcpu: u32) -> HvResult<()> {
        // SAFETY: destroys this thread's vCPU; nothing runs it now.
        check("hv_vcpu_destroy", unsafe { hv::hv_vcpu_destroy(vcpu) })?;
        self.vcpus.retain(|v| *v != vcpu);
        Ok(())
    }
    fn destroy_vm(&mut self) -> HvResult<()> {
        // SAFETY: destroys the VM this value created, after its vCPU.
        check("hv_vm_destroy", unsafe { hv::hv_vm_destroy() })?;
        self.created = false;
        Ok(())
    }
}
