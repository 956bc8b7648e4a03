
static hv_vcpuid_t vcpu;

static void check(hv_return_t r, const char *call)
{
    if (r != HV_SUCCESS) {
        fprintf(stderr, "repro: %s failed: %#x\n", call, (unsigned)r);
        exit(2);
    }
}

static uint64_t rreg(hv_x86_reg_t r) { uint64_t v; check(hv_vcpu_read_register(vcpu, r, &v), "hv_vcpu_read_register"); return v; }
static void wreg(hv_x86_reg_t r, uint64_t v) { check(hv_vcpu_write_register(vcpu, r, v), "hv_vcpu_write_register"); }
static uint64_t rvmcs(uint32_t f) { uint64_t v; check(hv_vmx_vcpu_read_vmcs(vcpu, f, &v), "hv_vmx_vcpu_read_vmcs"); return v; }
static void wvmcs(uint32_t f, uint64_t v) { check(hv_vmx_vcpu_write_vmcs(vcpu, f, v), "hv_vmx_vcpu_write_vmcs"); }

/* hv_x86_reg_t of a general register number (REX.R/B:reg). */
static hv_x86_reg_t hv_reg(unsigned n)
{
    static const hv_x86_reg_t map[16] = { 2, 3, 4, 5, 8, 9, 6, 7, 10, 11, 12, 13, 14, 15, 16, 17 };
    return map[n & 15];
}

/* The 32-bit MOVs the stub uses for MMIO: 89 /r (store), 8B /r (load),
 * C7 /0 id (store immediate), with an optional REX prefix. */
struct access { int write, imm; uint32_t value; hv_x86_reg_t reg; unsigned len; };

static int decode(uint64_t rip, struct access *a)
{
    const unsigned char *p = ram + rip;
    unsigned i = 0, rex = 0;
    if ((p[i] & 0xf0) == 0x40)
        rex = p[i++];
    unsigned op = p[i++], modrm = p[i++];
    unsigned mod = modrm >> 6, reg = ((modrm >> 3) & 7) | ((rex & 4) << 1), rm = modrm & 7;
    if (mod == 3)
        return -1;
    if (rm == 4) {
        unsigned sib = p[i++];
        if (mod == 0 && (sib & 7) == 5)
            i += 4;
    } else if (mod == 0 && rm == 5) {
        i += 4;
    }
    i += mod == 1 ? 1 : mod == 2 ? 4 : 0;
    memset(a, 0, sizeof *a);
    if (op == 0x89) {
        a->write = 1;
        a->reg = hv_reg(reg);
    } else if (op == 0x8b) {
        a->reg = hv_reg(reg);
    } else if (op == 0xc7) {
        a->write = a->imm = 1;
        memcpy(&a->value, p + i, 4);
        i += 4;
    } else {
        return -1;
    }
    a->len = i;
    return 0;
}

/* hv_vm_send_ioapic_intr takes a value in the format of a redirection
 * table register. */
static void deliver_entry(uint64_t e)
{
    check(hv_vm_send_ioapic_intr(e & ~((1ull << 12) | (1ull << 14))), "hv_vm_send_ioapic_intr");
}

static void drive(int pin, int level)
{
    if (SPLIT)
        ioapic_set_irq(pin, level);
    else if (level)
        check(hv_vm_ioapic_assert_irq(pin), "hv_vm_ioapic_assert_irq");
    else
        check(hv_vm_ioapic_deassert_irq(pin), "hv_vm_ioapic_deassert_irq");
}

static void host_op(unsigned n)
{
    const struct host_op *op = &HOST_OPS[n];
    switch (op->kind) {
    case 0: drive(op->pin, 1); break;
    case 1: drive(op->pin, 0); break;
    case 2: drive(op->pin, 1); drive(op->pin, 0); break;
    case 3: check(hv_vm_lapic_msi(op->addr, op->data), "hv_vm_lapic_msi"); break;
    }
}

static void complete(const struct access *a, uint32_t value, uint64_t rip)
{
    if (!a->write)
        wreg(a->reg, value);
    wreg(HV_X86_RIP, rip + a->len);
}

int main(void)
{
    /* Seed step 1: the VM with the in-kernel APIC, IOAPIC and ATPIC. */
    check(hv_vm_create(HV_VM_ACCEL_APIC), "hv_vm_create(HV_VM_ACCEL_APIC)");
    ram = valloc(RAM_SIZE);
    if (!ram) {
        perror("valloc");
        return 2;
    }
    memset(ram, 0, RAM_SIZE);
    install_memory();
    check(hv_vm_map(ram, 0, RAM_SIZE, HV_MEMORY_READ | HV_MEMORY_WRITE | HV_MEMORY_EXEC), "hv_vm_map");
    check(hv_vcpu_create(&vcpu, HV_VCPU_DEFAULT), "hv_vcpu_create");
    check(hv_vmx_vcpu_set_apic_address(vcpu, 0xfee00000), "hv_vmx_vcpu_set_apic_address");
    if (SPLIT)
        check(hv_vcpu_apic_ctrl(vcpu, HV_APIC_CTRL_IOAPIC_EOI), "hv_vcpu_apic_ctrl");
    for (int i = 0; i < 24; i++)
        rtbl[i] = 1u << 16;

    /* 64-bit long mode, entered directly (VMCS guest state, SDM vol. 3D B). */
    wvmcs(VMCS_GUEST_CR0, 0x80050033);
    wvmcs(VMCS_GUEST_CR3, PML4);
    wvmcs(VMCS_GUEST_CR4, 0x2020);
    wvmcs(VMCS_GUEST_IA32_EFER, 0x500);
    wvmcs(VMCS_CTRL_VMENTRY_CONTROLS, rvmcs(VMCS_CTRL_VMENTRY_CONTROLS) | (1u << 9));
    wvmcs(0x802, 0x08); wvmcs(0x4802, 0xffffffff); wvmcs(0x4816, 0xa09b);
    wvmcs(0x804, 0x10); wvmcs(0x4818, 0xc093);
    wvmcs(0x806, 0x10); wvmcs(0x481a, 0xc093);
    wvmcs(0x800, 0x10); wvmcs(0x4814, 0xc093);
    wvmcs(0x4822, 0x8b);
    wvmcs(0x6816, GDT); wvmcs(0x4810, 23);
    wvmcs(0x6818, IDT); wvmcs(0x4812, 4095);
    bool nse;
    check(hv_vcpu_apic_write(vcpu, 0xf0, 0x1ff, &nse), "hv_vcpu_apic_write");
    check(hv_vcpu_apic_write(vcpu, 0x80, 0, &nse), "hv_vcpu_apic_write");
    for (uint32_t lvt = 0x320; lvt <= 0x370; lvt += 0x10)
        check(hv_vcpu_apic_write(vcpu, lvt, 0x10000, &nse), "hv_vcpu_apic_write");
    wreg(HV_X86_RIP, STUB_ENTRY);
    wreg(HV_X86_RSP, STACK_TOP);
    wreg(HV_X86_RFLAGS, 0x202);

    char outcome[128] = "completed";
    int halted = 0;
    for (;;) {
        /* Seed step 2: run until the next exit; 3 ms deadline to find a hang. */
        check(hv_vcpu_run_until(vcpu, mach_absolute_time() + 3000000), "hv_vcpu_run_until");
        hv_vm_exitinfo_t info;
        check(hv_vcpu_exit_info(vcpu, &info), "hv_vcpu_exit_info");
        uint64_t rip = rreg(HV_X86_RIP);
        struct access a;
        if (info == HV_VM_EXITINFO_APIC_ACCESS_READ) {
            uint32_t value;
            if (decode(rip, &a) < 0)
                break;
            check(hv_vcpu_exit_apic_access_read(vcpu, &value), "hv_vcpu_exit_apic_access_read");
            complete(&a, value, rip);
            continue;
        }
        if (info == HV_VM_EXITINFO_IOAPIC_EOI) {
            uint8_t vector;
            check(hv_vcpu_exit_ioapic_eoi(vcpu, &vector), "hv_vcpu_exit_ioapic_eoi");
            ioapic_eoi(vector);
            continue;
        }
        uint32_t reason = (uint32_t)rvmcs(VMCS_RO_EXIT_REASON) & 0xffff;
        if (reason == VMX_REASON_VMX_TIMER_EXPIRED) {
            if (rvmcs(VMCS_GUEST_ACTIVITY_STATE) == 1 && ++halted >= 2) {
                snprintf(outcome, sizeof outcome, "hang at op %u", get32(CUR_OP));
                break;
            }
            continue;
        }
        halted = 0;
        if (reason == VMX_REASON_IO) {
            uint64_t qual = rvmcs(VMCS_RO_EXIT_QUALIFIC);
            unsigned port = (unsigned)(qual >> 16);
            uint32_t value = (uint32_t)rreg(HV_X86_RAX);
            wreg(HV_X86_RIP, rip + rvmcs(VMCS_RO_VMEXIT_INSTR_LEN));
            if (port == HYPERCALL_PORT)
                host_op(value);
            else if (port == END_PORT) {
                if (value == 1)
                    snprintf(outcome, sizeof outcome, "storm");
                break;
            } else if (port == 0x21 || port == 0xa1 || port == 0x20 || port == 0xa0)
                check(hv_vm_atpic_port_write((int)port, (uint8_t)value), "hv_vm_atpic_port_write");
            continue;
        }
        if (reason == VMX_REASON_EPT_VIOLATION) {
            uint64_t gpa = rvmcs(VMCS_GUEST_PHYSICAL_ADDRESS);
            if (gpa < 0xfec00000 || gpa >= 0xfec01000 || decode(rip, &a) < 0) {
                snprintf(outcome, sizeof outcome, "error: unexpected EPT violation at %#llx", (unsigned long long)gpa);
                break;
            }
            if (a.write) {
                uint32_t value = a.imm ? a.value : (uint32_t)rreg(a.reg);
                if (SPLIT)
                    ioapic_write(gpa - 0xfec00000, value);
                else
                    check(hv_vm_ioapic_write(gpa, value), "hv_vm_ioapic_write");
                complete(&a, 0, rip);
            } else {
                uint32_t value;
                if (SPLIT)
                    value = ioapic_read(gpa - 0xfec00000);
                else
                    check(hv_vm_ioapic_read(gpa, &value), "hv_vm_ioapic_read");
                complete(&a, value, rip);
            }
            continue;
        }
        if (reason == VMX_REASON_APIC_ACCESS) {
            uint32_t offset = (uint32_t)(rvmcs(VMCS_RO_EXIT_QUALIFIC) & 0xfff);
            if (decode(rip, &a) < 0 || !a.write)
                break;
            uint32_t value = a.imm ? a.value : (uint32_t)rreg(a.reg);
            bool no_side_effect = true;
            check(hv_vcpu_apic_write(vcpu, offset, value, &no_side_effect), "hv_vcpu_apic_write");
            complete(&a, 0, rip);
            /* Seed step 3: side effects are told by the exit info. */
            if (!no_side_effect) {
                check(hv_vcpu_exit_info(vcpu, &info), "hv_vcpu_exit_info");
                if (info == HV_VM_EXITINFO_IOAPIC_EOI) {
                    uint8_t vector;
                    check(hv_vcpu_exit_ioapic_eoi(vcpu, &vector), "hv_vcpu_exit_ioapic_eoi");
                    ioapic_eoi(vector);
                }
            }
            continue;
        }
        if (reason == VMX_REASON_WRMSR) {
            uint32_t msr = (uint32_t)rreg(HV_X86_RCX);
            uint64_t value = rreg(HV_X86_RDX) << 32 | (rreg(HV_X86_RAX) & 0xffffffffu);
            /* FB14021745: move the APIC window first, then write the MSR. */
            if (msr == 0x1b && (value & ~0xfffull) != 0xfee00000)
                check(hv_vmx_vcpu_set_apic_address(vcpu, value & 0xffffff000ull), "hv_vmx_vcpu_set_apic_address");
            check(hv_vcpu_write_msr(vcpu, msr, value), "hv_vcpu_write_msr");
            wreg(HV_X86_RIP, rip + rvmcs(VMCS_RO_VMEXIT_INSTR_LEN));
            continue;
        }
        snprintf(outcome, sizeof outcome, "error: VMX exit reason %u (during op %u)", reason, get32(CUR_OP));
        break;
    }
    decode_log(outcome);
    return report();
}
