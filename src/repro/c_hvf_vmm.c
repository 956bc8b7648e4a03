
/* The vCPU of the calling thread: hv.h lets only the thread that created a
 * vCPU use it, so each thread names its own (several CPUs: one thread
 * each). */
static _Thread_local hv_vcpuid_t vcpu;

/* Every call's return code is checked; a failure means the program could
 * not run (exit 2), never a finding. */
static void check(hv_return_t r, const char *call)
{
    if (r == HV_SUCCESS)
        return;
    fprintf(stderr, "repro: %s failed: %#x\n", call, (unsigned)r);
    if (r == HV_DENIED)
        fprintf(stderr, "repro: HV_DENIED: the process lacks the com.apple.security.hypervisor entitlement; sign it:\n"
                        "  codesign --sign - --entitlements hv.entitlements --force ./repro\n");
    exit(2);
}

static void cannot_run(const char *why)
{
    fprintf(stderr, "repro: cannot run here: %s\n", why);
    exit(2);
}

static uint64_t rreg(hv_x86_reg_t r) { uint64_t v; check(hv_vcpu_read_register(vcpu, r, &v), "hv_vcpu_read_register"); return v; }
static void wreg(hv_x86_reg_t r, uint64_t v) { check(hv_vcpu_write_register(vcpu, r, v), "hv_vcpu_write_register"); }
static uint64_t rvmcs(uint32_t f) { uint64_t v; check(hv_vmx_vcpu_read_vmcs(vcpu, f, &v), "hv_vmx_vcpu_read_vmcs"); return v; }
static void wvmcs(uint32_t f, uint64_t v) { check(hv_vmx_vcpu_write_vmcs(vcpu, f, v), "hv_vmx_vcpu_write_vmcs"); }
static uint64_t cap(uint32_t field) { uint64_t v; check(hv_vmx_read_capability(field, &v), "hv_vmx_read_capability"); return v; }
static uint64_t rmsr(uint32_t msr) { uint64_t v; check(hv_vcpu_read_msr(vcpu, msr, &v), "hv_vcpu_read_msr"); return v; }

/* The allowed-0/allowed-1 rule (SDM vol. 3D A.3: bits 31:0 of a capability
 * must be 1, bits 63:32 may be 1), as QEMU, OrbStack and uhyve apply it. */
static uint64_t cap2ctrl(uint64_t capability, uint64_t wanted)
{
    return (wanted | (capability & 0xffffffff)) & (capability >> 32);
}

/* Control bits (SDM vol. 3C 24.6-24.8). */
#define PIN_EXTERNAL_INTERRUPT_EXITING (1u << 0)
#define PIN_NMI_EXITING (1u << 3)
#define PIN_VIRTUAL_NMIS (1u << 5)
#define CPU_UNCONDITIONAL_IO_EXITING (1u << 24)
#define CPU_SECONDARY_CONTROLS (1u << 31)
#define CPU2_VIRTUALIZE_APIC_ACCESSES (1u << 0)
#define EXIT_HOST_ADDRESS_SPACE_SIZE (1u << 9)
#define ENTRY_IA32E_MODE_GUEST (1u << 9)
#define ENTRY_LOAD_IA32_EFER (1u << 15)

/* 64-bit long mode entered directly: the guest state of SDM vol. 3C 26.3.1. */
#define GUEST_CR0 0x80050033ull /* PG AM WP NE ET MP PE */
#define GUEST_CR4 0x20ull       /* PAE */
#define GUEST_EFER 0x500ull     /* LMA LME */

static void set_controls(void)
{
    uint64_t want[5][3] = {
        { VMCS_CTRL_PIN_BASED, HV_VMX_CAP_PINBASED, PIN_EXTERNAL_INTERRUPT_EXITING | PIN_NMI_EXITING | PIN_VIRTUAL_NMIS },
        { VMCS_CTRL_CPU_BASED, HV_VMX_CAP_PROCBASED, CPU_UNCONDITIONAL_IO_EXITING | CPU_SECONDARY_CONTROLS },
        { VMCS_CTRL_CPU_BASED2, HV_VMX_CAP_PROCBASED2, CPU2_VIRTUALIZE_APIC_ACCESSES },
        { VMCS_CTRL_VMEXIT_CONTROLS, HV_VMX_CAP_EXIT, EXIT_HOST_ADDRESS_SPACE_SIZE },
        { VMCS_CTRL_VMENTRY_CONTROLS, HV_VMX_CAP_ENTRY, ENTRY_IA32E_MODE_GUEST | ENTRY_LOAD_IA32_EFER },
    };
    for (int i = 0; i < 5; i++) {
        uint64_t value = cap2ctrl(cap((uint32_t)want[i][1]), want[i][2]);
        if ((value & want[i][2]) != want[i][2]) {
            fprintf(stderr, "repro: VMCS field %#llx: this CPU cannot set %#llx (capability allows %#llx)\n",
                    (unsigned long long)want[i][0], (unsigned long long)want[i][2], (unsigned long long)value);
            cannot_run("a needed VMX control is not available");
        }
        wvmcs((uint32_t)want[i][0], value);
    }
}

/* CR0/CR4 against the fixed-bit capabilities (SDM 26.3.1.1, A.7, A.8). The
 * host owns the bits it forces (the masks) and the guest reads its own
 * values (the shadows): CR4.VMXE stays hidden, as in QEMU and uhyve. */
static void set_control_registers(void)
{
    uint64_t cr0_0 = cap(HV_VMX_CAP_CR0_FIXED0), cr0_1 = cap(HV_VMX_CAP_CR0_FIXED1);
    uint64_t cr4_0 = cap(HV_VMX_CAP_CR4_FIXED0), cr4_1 = cap(HV_VMX_CAP_CR4_FIXED1);
    uint64_t cr0 = (GUEST_CR0 | cr0_0) & cr0_1, cr4 = (GUEST_CR4 | cr4_0) & cr4_1;
    if ((cr0 & GUEST_CR0) != GUEST_CR0 || (cr4 & GUEST_CR4) != GUEST_CR4)
        cannot_run("CR0/CR4 fixed bits forbid long mode");
    wvmcs(VMCS_GUEST_CR0, cr0);
    wvmcs(VMCS_CTRL_CR0_MASK, (cr0_0 | ~cr0_1) & 0xffffffff);
    wvmcs(VMCS_CTRL_CR0_SHADOW, GUEST_CR0);
    wvmcs(VMCS_GUEST_CR4, cr4);
    wvmcs(VMCS_CTRL_CR4_MASK, (cr4_0 | ~cr4_1) & 0xffffffff);
    wvmcs(VMCS_CTRL_CR4_SHADOW, GUEST_CR4);
    wvmcs(VMCS_GUEST_CR3, PML4);
    wvmcs(VMCS_GUEST_IA32_EFER, GUEST_EFER);
}

/* All eight segments (SDM 26.3.1.2): flat 64-bit code, flat data with
 * G = 1 and a 4 GiB limit, an unusable LDTR, a busy 64-bit TSS. */
static void set_segments(void)
{
    static const struct { uint32_t sel, limit, ar, base; uint64_t s, l, a; } seg[8] = {
        { VMCS_GUEST_ES, VMCS_GUEST_ES_LIMIT, VMCS_GUEST_ES_AR, VMCS_GUEST_ES_BASE, 0x10, 0xffffffff, 0xc093 },
        { VMCS_GUEST_CS, VMCS_GUEST_CS_LIMIT, VMCS_GUEST_CS_AR, VMCS_GUEST_CS_BASE, 0x08, 0xffffffff, 0xa09b },
        { VMCS_GUEST_SS, VMCS_GUEST_SS_LIMIT, VMCS_GUEST_SS_AR, VMCS_GUEST_SS_BASE, 0x10, 0xffffffff, 0xc093 },
        { VMCS_GUEST_DS, VMCS_GUEST_DS_LIMIT, VMCS_GUEST_DS_AR, VMCS_GUEST_DS_BASE, 0x10, 0xffffffff, 0xc093 },
        { VMCS_GUEST_FS, VMCS_GUEST_FS_LIMIT, VMCS_GUEST_FS_AR, VMCS_GUEST_FS_BASE, 0x10, 0xffffffff, 0xc093 },
        { VMCS_GUEST_GS, VMCS_GUEST_GS_LIMIT, VMCS_GUEST_GS_AR, VMCS_GUEST_GS_BASE, 0x10, 0xffffffff, 0xc093 },
        { VMCS_GUEST_LDTR, VMCS_GUEST_LDTR_LIMIT, VMCS_GUEST_LDTR_AR, VMCS_GUEST_LDTR_BASE, 0, 0, 1u << 16 },
        { VMCS_GUEST_TR, VMCS_GUEST_TR_LIMIT, VMCS_GUEST_TR_AR, VMCS_GUEST_TR_BASE, 0, 0x67, 0x8b },
    };
    for (int i = 0; i < 8; i++) {
        wvmcs(seg[i].sel, seg[i].s);
        wvmcs(seg[i].limit, seg[i].l);
        wvmcs(seg[i].ar, seg[i].a);
        wvmcs(seg[i].base, 0);
    }
    wvmcs(VMCS_GUEST_GDTR_BASE, GDT);
    wvmcs(VMCS_GUEST_GDTR_LIMIT, 23);
    wvmcs(VMCS_GUEST_IDTR_BASE, IDT);
    wvmcs(VMCS_GUEST_IDTR_LIMIT, 4095);
    /* Active, no blocking, no event to inject (SDM 26.3.1.5, 26.2.1.3). */
    wvmcs(VMCS_GUEST_ACTIVITY_STATE, 0);
    wvmcs(VMCS_GUEST_INTERRUPTIBILITY, 0);
    wvmcs(VMCS_CTRL_VMENTRY_IRQ_INFO, 0);
}

/* A halted vCPU blocks in the kernel under HV_VM_ACCEL_APIC, whatever the
 * deadline: a watchdog thread kicks the vCPU that runs (kick_vcpu) every
 * 20 ms with hv_vcpu_interrupt (the one vCPU call allowed from another
 * thread) and the loop judges a hang by the stub standing still in HLT. */
#define NO_VCPU (~0u)
static atomic_int watchdog_stop;
static atomic_uint kick_vcpu = NO_VCPU;

static void *watchdog(void *unused)
{
    (void)unused;
    const struct timespec period = { 0, 20 * 1000 * 1000 };
    while (!atomic_load(&watchdog_stop)) {
        nanosleep(&period, NULL);
        hv_vcpuid_t v = atomic_load(&kick_vcpu);
        if (v != NO_VCPU)
            check(hv_vcpu_interrupt(&v, 1), "hv_vcpu_interrupt");
    }
    return NULL;
}

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

/* The guest's IA32_APIC_BASE write, as pmj's QEMU handles it: a write
 * with a reserved bit or an invalid transition raises #GP (SDM 11.4.4,
 * 11.12.5; returns 1, and the caller injects it); otherwise move the MMIO
 * window first (FB14021745: moving and enabling in one write fails), read
 * the MSR back. Enable/x2APIC changes have no documented call: the
 * framework must accept hv_vcpu_write_msr and show the value on reading
 * back, or the scenario cannot run here (x2APIC is taken as unavailable
 * until this works). */
static int write_apic_base(uint64_t value)
{
    const uint64_t bsp = 1u << 8, en = 1u << 11, extd = 1u << 10, base = value & 0x7ffffff000ull;
    uint64_t now = rmsr(0x1b);
    uint64_t from = now & (en | extd), to = value & (en | extd);
    if ((value & ~(0x7ffffff000ull | en | extd | bsp)) || to == extd ||
        (from == (en | extd) && to == en) || (from == 0 && to == (en | extd)))
        return 1;
    if (base != (now & 0x7ffffff000ull))
        check(hv_vmx_vcpu_set_apic_address(vcpu, base), "hv_vmx_vcpu_set_apic_address");
    if ((rmsr(0x1b) | bsp) == (value | bsp))
        return 0;
    hv_return_t r = hv_vcpu_write_msr(vcpu, 0x1b, value);
    now = rmsr(0x1b);
    if (r != HV_SUCCESS || (now | bsp) != (value | bsp)) {
        fprintf(stderr, "repro: IA32_APIC_BASE %#llx: hv_vcpu_write_msr answered %#x, the MSR reads back %#llx\n",
                (unsigned long long)value, (unsigned)r, (unsigned long long)now);
        cannot_run("the APIC cannot be enabled, disabled or put in x2APIC mode through the framework");
    }
    return 0;
}

/* #GP(0) at the next VM entry (SDM vol. 3C 26.6): valid, hardware
 * exception, error code 0; RIP stays on the faulting instruction, where
 * the stub's #GP handler expects it (it logs the fault and skips it). */
static void inject_gp(void)
{
    wvmcs(VMCS_CTRL_VMENTRY_EXC_ERROR, 0);
    wvmcs(VMCS_CTRL_VMENTRY_IRQ_INFO, 1u << 31 | 1u << 11 | 3u << 8 | 13);
}

/* The in-kernel IOAPIC's identity (82093AA 3.2.2: version in bits 7:0,
 * highest entry in 23:16); a scenario that depends on it (the EOI register,
 * a read of the version register) runs only on a matching one. */
static void check_ioapic_identity(void)
{
    uint32_t v;
    check(hv_vm_ioapic_write(0xfec00000, 1), "hv_vm_ioapic_write");
    check(hv_vm_ioapic_read(0xfec00010, &v), "hv_vm_ioapic_read");
    printf("in-kernel IOAPIC: version 0x%02x, %u pins\n", v & 0xff, ((v >> 16) & 0xff) + 1);
    if (VERSION_DEPENDENT && ((v & 0xff) != IOAPIC_VERSION || ((v >> 16) & 0xff) != 23))
        cannot_run("the scenario depends on the IOAPIC's version register (version IOAPIC_VERSION, 24 pins), "
                   "which the in-kernel one does not have: use irqchip=split");
}


/* The calling thread's vCPU, created and brought up: the APIC window at
 * 0xFEE00000 (the split shape's EOIs to this program), the controls, CR0/CR4
 * and segments of a direct long-mode entry; its local APIC software-enabled
 * with spurious vector 0xFF (SVR 0x1FF, or 0xFF: software-disabled, as
 * after RESET, SDM 11.4.7.1), TPR 0, every LVT masked. */
static void bring_up(uint32_t svr)
{
    check(hv_vcpu_create(&vcpu, HV_VCPU_DEFAULT), "hv_vcpu_create");
    check(hv_vmx_vcpu_set_apic_address(vcpu, 0xfee00000), "hv_vmx_vcpu_set_apic_address");
    if (SPLIT)
        check(hv_vcpu_apic_ctrl(vcpu, HV_APIC_CTRL_IOAPIC_EOI), "hv_vcpu_apic_ctrl");
    set_controls();
    set_control_registers();
    set_segments();
    bool nse;
    check(hv_vcpu_apic_write(vcpu, 0xf0, svr, &nse), "hv_vcpu_apic_write");
    check(hv_vcpu_apic_write(vcpu, 0x80, 0, &nse), "hv_vcpu_apic_write");
    for (uint32_t lvt = 0x320; lvt <= 0x370; lvt += 0x10)
        check(hv_vcpu_apic_write(vcpu, lvt, 0x10000, &nse), "hv_vcpu_apic_write");
}

/* SDM 11.4.3: a globally disabled APIC (IA32_APIC_BASE.EN clear) has no
 * registers: its page reads 0 and a write reaches nothing (no ICR, no SVR).
 * No call tells the in-kernel APIC of the disable, so this program answers
 * for it, as irqdiff's hvf VMM does. */
static int apic_disabled(void) { return !(rmsr(0x1b) & (1u << 11)); }

/* What one exit asks of the caller. */
enum exit_result {
    EXIT_RESUME, /* run the vCPU again */
    EXIT_END,    /* the run ended; the outcome says how */
    EXIT_IDLE,   /* several CPUs: this one is idle in its mailbox loop */
};

/* Defined by the program's main part: an out to a port of the multi-CPU
 * protocol, and an INIT or STARTUP IPI this vCPU sent (an exit of the
 * sender, HV_VM_EXITINFO_INIT_AP / STARTUP_AP). */
static enum exit_result smp_out(unsigned port, char *outcome, size_t size);
static enum exit_result ap_exit(hv_vm_exitinfo_t info, char *outcome, size_t size);

/* The hang judgement: host interrupts (the watchdog's kicks) in HLT with
 * the op and delivery counters standing still, three in a row. */
struct quiet { unsigned op, deliveries, kicks; };

/* Runs the calling thread's vCPU to its next exit and handles it. */
static enum exit_result run_once(struct quiet *q, char *outcome, size_t size)
{
    /* Seed step 2: run until the next exit. */
    atomic_store(&kick_vcpu, vcpu);
    hv_return_t r = hv_vcpu_run_until(vcpu, HV_DEADLINE_FOREVER);
    if (r != HV_SUCCESS) {
        uint64_t error = 0;
        hv_return_t read = hv_vmx_vcpu_read_vmcs(vcpu, VMCS_RO_INSTR_ERROR, &error);
        if (read == HV_SUCCESS)
            fprintf(stderr, "repro: VM entry failed: VM-instruction error %llu (SDM 31.4; 7: invalid control fields)\n",
                    (unsigned long long)error);
        else
            fprintf(stderr, "repro: reading the VM-instruction error failed: %#x\n", (unsigned)read);
        check(r, "hv_vcpu_run_until");
    }
    hv_vm_exitinfo_t info;
    check(hv_vcpu_exit_info(vcpu, &info), "hv_vcpu_exit_info");
    uint64_t rip = rreg(HV_X86_RIP);
    struct access a;
    if (info == HV_VM_EXITINFO_SMI)
        return EXIT_RESUME; /* host-side: resume, RIP untouched (OrbStack does so) */
    if (info == HV_VM_EXITINFO_APIC_ACCESS_READ) {
        uint32_t value = 0;
        if (decode(rip, &a) < 0) {
            snprintf(outcome, size, "error: cannot decode the APIC read at %#llx", (unsigned long long)rip);
            return EXIT_END;
        }
        if (!apic_disabled())
            check(hv_vcpu_exit_apic_access_read(vcpu, &value), "hv_vcpu_exit_apic_access_read");
        complete(&a, value, rip);
        return EXIT_RESUME;
    }
    if (info == HV_VM_EXITINFO_IOAPIC_EOI) {
        uint8_t vector;
        check(hv_vcpu_exit_ioapic_eoi(vcpu, &vector), "hv_vcpu_exit_ioapic_eoi");
        ioapic_eoi(vector);
        return EXIT_RESUME;
    }
    if (info == HV_VM_EXITINFO_INIT_AP || info == HV_VM_EXITINFO_STARTUP_AP)
        return ap_exit(info, outcome, size); /* an x2APIC ICR write, in the kernel */
    uint64_t full_reason = rvmcs(VMCS_RO_EXIT_REASON);
    uint32_t reason = (uint32_t)full_reason & 0xffff;
    if (full_reason & (1u << 31)) {
        fprintf(stderr, "repro: VM entry failed: exit reason %u, qualification %#llx (SDM 26.8; 33: invalid guest state)\n",
                reason, (unsigned long long)rvmcs(VMCS_RO_EXIT_QUALIFIC));
        cannot_run("the processor refused the guest state");
    }
    if (reason == VMX_REASON_IRQ) {
        /* A host interrupt or the watchdog's kick: resume. Three kicks in
         * HLT with the counters standing still are a hang. */
        if (rvmcs(VMCS_GUEST_ACTIVITY_STATE) == 1) {
            unsigned op = get32(CUR_OP), deliveries = get32(DELIVERIES);
            q->kicks = op == q->op && deliveries == q->deliveries ? q->kicks + 1 : 1;
            q->op = op;
            q->deliveries = deliveries;
            if (q->kicks >= 3) {
                snprintf(outcome, size, "hang at op %u", op);
                return EXIT_END;
            }
        } else {
            q->kicks = 0;
        }
        return EXIT_RESUME;
    }
    if (reason == VMX_REASON_IO_SMI || reason == VMX_REASON_OTHER_SMI)
        return EXIT_RESUME;
    q->kicks = 0;
    if (reason == VMX_REASON_IO) {
        uint64_t qual = rvmcs(VMCS_RO_EXIT_QUALIFIC);
        unsigned port = (unsigned)(qual >> 16);
        uint32_t value = (uint32_t)rreg(HV_X86_RAX);
        wreg(HV_X86_RIP, rip + rvmcs(VMCS_RO_VMEXIT_INSTR_LEN));
        if (port == HYPERCALL_PORT) {
            if (value >= sizeof HOST_OPS / sizeof HOST_OPS[0]) {
                snprintf(outcome, size, "error: the guest asked for host op %u, which does not exist", value);
                return EXIT_END;
            }
            host_op(value);
        } else if (port == END_PORT) {
            if (value == 1)
                snprintf(outcome, size, "storm");
            else if (value == 2)
                snprintf(outcome, size, "log full");
            else if (value == 3)
                snprintf(outcome, size, "error: the guest took a #GP outside the stub's RDMSR/WRMSR (during op %u)", get32(CUR_OP));
            return EXIT_END;
        } else if (port == 0x21 || port == 0xa1 || port == 0x20 || port == 0xa0) {
            check(hv_vm_atpic_port_write((int)port, (uint8_t)value), "hv_vm_atpic_port_write");
        } else {
            return smp_out(port, outcome, size);
        }
        return EXIT_RESUME;
    }
    if (reason == VMX_REASON_EPT_VIOLATION) {
        uint64_t gpa = rvmcs(VMCS_GUEST_PHYSICAL_ADDRESS);
        if (gpa < 0xfec00000 || gpa >= 0xfec01000 || decode(rip, &a) < 0) {
            snprintf(outcome, size, "error: unexpected EPT violation at %#llx", (unsigned long long)gpa);
            return EXIT_END;
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
        return EXIT_RESUME;
    }
    if (reason == VMX_REASON_APIC_ACCESS) {
        uint32_t offset = (uint32_t)(rvmcs(VMCS_RO_EXIT_QUALIFIC) & 0xfff);
        if (decode(rip, &a) < 0 || !a.write) {
            snprintf(outcome, size, "error: cannot decode the APIC write at %#llx", (unsigned long long)rip);
            return EXIT_END;
        }
        uint32_t value = a.imm ? a.value : (uint32_t)rreg(a.reg);
        complete(&a, 0, rip);
        if (apic_disabled())
            return EXIT_RESUME; /* dropped: the APIC is disabled */
        bool no_side_effect = true;
        check(hv_vcpu_apic_write(vcpu, offset, value, &no_side_effect), "hv_vcpu_apic_write");
        /* Seed step 3: side effects are told by the exit info. */
        if (!no_side_effect) {
            check(hv_vcpu_exit_info(vcpu, &info), "hv_vcpu_exit_info");
            if (info == HV_VM_EXITINFO_IOAPIC_EOI) {
                uint8_t vector;
                check(hv_vcpu_exit_ioapic_eoi(vcpu, &vector), "hv_vcpu_exit_ioapic_eoi");
                ioapic_eoi(vector);
            } else if (info == HV_VM_EXITINFO_INIT_AP || info == HV_VM_EXITINFO_STARTUP_AP) {
                return ap_exit(info, outcome, size);
            }
        }
        return EXIT_RESUME;
    }
    if (reason == VMX_REASON_WRMSR || reason == VMX_REASON_RDMSR) {
        uint32_t msr = (uint32_t)rreg(HV_X86_RCX);
        if (msr != 0x1b) {
            snprintf(outcome, size, "error: MSR %#x accessed (during op %u)", msr, get32(CUR_OP));
            return EXIT_END;
        }
        if (reason == VMX_REASON_WRMSR) {
            if (write_apic_base(rreg(HV_X86_RDX) << 32 | (rreg(HV_X86_RAX) & 0xffffffffu))) {
                inject_gp();
                return EXIT_RESUME;
            }
        } else {
            uint64_t value = rmsr(0x1b);
            wreg(HV_X86_RAX, value & 0xffffffffu);
            wreg(HV_X86_RDX, value >> 32);
        }
        wreg(HV_X86_RIP, rip + rvmcs(VMCS_RO_VMEXIT_INSTR_LEN));
        return EXIT_RESUME;
    }
    snprintf(outcome, size, "error: VMX exit reason %u (during op %u)", reason, get32(CUR_OP));
    return EXIT_END;
}
