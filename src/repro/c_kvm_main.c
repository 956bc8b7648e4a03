
static unsigned char *ram;
static int vm;

static void die(const char *what)
{
    fprintf(stderr, "repro: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void put32(unsigned long long at, unsigned v) { memcpy(ram + at, &v, 4); }
static void put64(unsigned long long at, unsigned long long v) { memcpy(ram + at, &v, 8); }
static unsigned get32(unsigned long long at) { unsigned v; memcpy(&v, ram + at, 4); return v; }
static void on_kick(int sig) { (void)sig; }

static void irq_line(int pin, int level)
{
    /* KVM's in-kernel IOAPIC takes the level as the request itself. */
    struct kvm_irq_level l = { .irq = pin, .level = level };
    if (ioctl(vm, KVM_IRQ_LINE, &l) < 0)
        die("KVM_IRQ_LINE");
}

static void host_op(unsigned n)
{
    const struct host_op *op = &HOST_OPS[n];
    struct kvm_msi msi;
    switch (op->kind) {
    case 0: irq_line(op->pin, 1); break;
    case 1: irq_line(op->pin, 0); break;
    case 2: irq_line(op->pin, 1); irq_line(op->pin, 0); break;
    case 3:
        memset(&msi, 0, sizeof msi);
        msi.address_lo = (unsigned)op->addr;
        msi.address_hi = (unsigned)(op->addr >> 32);
        msi.data = op->data;
        if (ioctl(vm, KVM_SIGNAL_MSI, &msi) < 0)
            die("KVM_SIGNAL_MSI");
        break;
    }
}

static int observed_count;
static char observed[4096][512];

static void decode_log(const char *outcome)
{
    unsigned long long end, p = LOG;
    memcpy(&end, ram + LOG_PTR, 8);
    while (p < end && observed_count < 4095) {
        unsigned kind = get32(p), op = get32(p + 4);
        char *line = observed[observed_count++];
        if (kind == 1) {
            snprintf(line, 512, "op %u deliver 0x%02x", op, get32(p + 8) & 0xff);
            p += 16;
        } else if (kind == 3 || kind == 4) {
            snprintf(line, 512, "op %u read %s[0x%x] = 0x%x", op, kind == 3 ? "ioapic" : "lapic", get32(p + 8), get32(p + 12));
            p += 16;
        } else if (kind == 2) {
            unsigned w[50], remote = 0, status = 0;
            int n = snprintf(line, 512, "op %u snapshot", op);
            for (int i = 0; i < 50; i++)
                w[i] = get32(p + 8 + 4 * i);
            for (int reg = 0; reg < 3; reg++) {
                n += snprintf(line + n, 512 - n, " %s=", reg == 0 ? "irr" : reg == 1 ? "isr" : "tmr");
                for (int i = 7; i >= 0; i--)
                    n += snprintf(line + n, 512 - n, "%08x", w[reg * 8 + i]);
            }
            for (int pin = 0; pin < 24; pin++) {
                remote |= ((w[26 + pin] >> 14) & 1u) << pin;
                status |= ((w[26 + pin] >> 12) & 1u) << pin;
            }
            snprintf(line + n, 512 - n, " tpr=%02x ppr=%02x remote_irr=%06x delivery_status=%06x", w[24] & 0xff, w[25] & 0xff, remote, status);
            p += 52 * 4;
        } else {
            snprintf(line, 512, "corrupt log record kind %u", kind);
            break;
        }
    }
    snprintf(observed[observed_count++], 512, "%s", outcome);
}

int main(void)
{
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0)
        die("/dev/kvm");
    vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0)
        die("KVM_CREATE_VM");
    if (ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0)
        die("KVM_CREATE_IRQCHIP");
    ram = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (ram == MAP_FAILED)
        die("mmap");
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = RAM_SIZE, .userspace_addr = (unsigned long)ram,
    };
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
        die("KVM_SET_USER_MEMORY_REGION");
    /* GSI n goes to IOAPIC pin n only: the 8259 is not in the path. */
    struct {
        struct kvm_irq_routing r;
        struct kvm_irq_routing_entry e[24];
    } routing;
    memset(&routing, 0, sizeof routing);
    routing.r.nr = 24;
    for (int i = 0; i < 24; i++) {
        routing.e[i].gsi = i;
        routing.e[i].type = KVM_IRQ_ROUTING_IRQCHIP;
        routing.e[i].u.irqchip.irqchip = KVM_IRQCHIP_IOAPIC;
        routing.e[i].u.irqchip.pin = i;
    }
    if (ioctl(vm, KVM_SET_GSI_ROUTING, &routing) < 0)
        die("KVM_SET_GSI_ROUTING");
    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0)
        die("KVM_CREATE_VCPU");
    struct {
        struct kvm_cpuid2 c;
        struct kvm_cpuid_entry2 e[256];
    } cpuid;
    memset(&cpuid, 0, sizeof cpuid);
    cpuid.c.nent = 256;
    if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, &cpuid) < 0)
        die("KVM_GET_SUPPORTED_CPUID");
    if (ioctl(vcpu, KVM_SET_CPUID2, &cpuid) < 0)
        die("KVM_SET_CPUID2");
    int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED)
        die("mmap kvm_run");

    /* Guest memory: GDT, IDT (64-bit interrupt gates), identity-mapped page
     * tables (2 MiB pages, APIC pages uncached), the stub and the tables. */
    put64(GDT + 8, 0x00af9a000000ffffULL);
    put64(GDT + 16, 0x00cf92000000ffffULL);
    for (int v = 0; v < 256; v++) {
        unsigned long long h = VECTORS[v];
        unsigned char *g = ram + IDT + 16 * v;
        memset(g, 0, 16);
        g[0] = h & 0xff; g[1] = (h >> 8) & 0xff; g[2] = 0x08; g[5] = 0x8e;
        g[6] = (h >> 16) & 0xff; g[7] = (h >> 24) & 0xff;
        put32(IDT + 16 * v + 8, (unsigned)(h >> 32));
    }
    put64(PML4, PDPT | 3);
    for (int i = 0; i < 4; i++)
        put64(PDPT + 8 * i, (PD + 0x1000ULL * i) | 3);
    for (unsigned long long i = 0; i < 2048; i++) {
        unsigned long long a = i << 21, e = a | 0x83;
        if (a == 0xfec00000ULL || a == 0xfee00000ULL)
            e |= 0x18;
        put64(PD + 8 * i, e);
    }
    memcpy(ram + CODE, STUB, sizeof STUB);
    put32(X2APIC_FLAG, X2APIC);
    put64(LOG_PTR, LOG);
    memcpy(ram + BODY_DIR, BODY_DIR_TABLE, sizeof BODY_DIR_TABLE);
    memcpy(ram + NTH_TABLE, NTH_TABLE_BYTES, sizeof NTH_TABLE_BYTES);
    memcpy(ram + OPS, OPS_TABLE, sizeof OPS_TABLE);

    /* 64-bit long mode, entered directly. */
    struct kvm_sregs sregs;
    if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0)
        die("KVM_GET_SREGS");
    struct kvm_segment code = { .base = 0, .limit = 0xffffffff, .selector = 8, .type = 0xb, .present = 1, .s = 1, .l = 1, .g = 1 };
    struct kvm_segment data = code;
    data.selector = 0x10; data.type = 3; data.db = 1; data.l = 0;
    sregs.cs = code;
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data;
    sregs.gdt.base = GDT; sregs.gdt.limit = 23;
    sregs.idt.base = IDT; sregs.idt.limit = 4095;
    sregs.cr0 = 0x80050033; sregs.cr3 = PML4; sregs.cr4 = 0x20; sregs.efer = 0x500;
    sregs.apic_base = 0xfee00900;
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0)
        die("KVM_SET_SREGS");
    /* The local APIC: software-enabled (SVR 0x1ff), TPR 0, every LVT masked. */
    struct kvm_lapic_state lapic;
    if (ioctl(vcpu, KVM_GET_LAPIC, &lapic) < 0)
        die("KVM_GET_LAPIC");
    unsigned v32;
    v32 = 0; memcpy(lapic.regs + 0x80, &v32, 4);
    v32 = 0x1ff; memcpy(lapic.regs + 0xf0, &v32, 4);
    v32 = 0x10000;
    for (int off = 0x320; off <= 0x370; off += 0x10)
        memcpy(lapic.regs + off, &v32, 4);
    if (ioctl(vcpu, KVM_SET_LAPIC, &lapic) < 0)
        die("KVM_SET_LAPIC");
    /* The IOAPIC: every entry masked with vector 0; the 8259s masked. */
    struct kvm_irqchip chip;
    memset(&chip, 0, sizeof chip);
    chip.chip_id = KVM_IRQCHIP_IOAPIC;
    if (ioctl(vm, KVM_GET_IRQCHIP, &chip) < 0)
        die("KVM_GET_IRQCHIP");
    for (int i = 0; i < 24; i++)
        chip.chip.ioapic.redirtbl[i].bits = 1ULL << 16;
    if (ioctl(vm, KVM_SET_IRQCHIP, &chip) < 0)
        die("KVM_SET_IRQCHIP");
    for (int id = KVM_IRQCHIP_PIC_MASTER; id <= KVM_IRQCHIP_PIC_SLAVE; id++) {
        memset(&chip, 0, sizeof chip);
        chip.chip_id = id;
        if (ioctl(vm, KVM_GET_IRQCHIP, &chip) < 0)
            die("KVM_GET_IRQCHIP");
        chip.chip.pic.imr = 0xff;
        if (ioctl(vm, KVM_SET_IRQCHIP, &chip) < 0)
            die("KVM_SET_IRQCHIP");
    }
    struct kvm_regs regs;
    memset(&regs, 0, sizeof regs);
    regs.rip = STUB_ENTRY; regs.rsp = STACK_TOP; regs.rflags = 0x202;
    if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
        die("KVM_SET_REGS");

    /* A halted vCPU is found by a one-shot timer signal that interrupts a
     * KVM_RUN that blocks for 3 ms; halted at two kicks in a row = hang. */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_kick;
    sigaction(SIGRTMIN + 3, &sa, NULL);
    struct sigevent sev;
    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = SIGRTMIN + 3;
    sev._sigev_un._tid = syscall(SYS_gettid);
    timer_t timer;
    if (timer_create(CLOCK_MONOTONIC, &sev, &timer) < 0)
        die("timer_create");
    struct itimerspec kick = { .it_value = { 0, 3000000 } }, off = { { 0, 0 }, { 0, 0 } };
    int halted_kicks = 0;
    char outcome[128] = "completed";
    for (;;) {
        timer_settime(timer, 0, &kick, NULL);
        int r = ioctl(vcpu, KVM_RUN, 0);
        timer_settime(timer, 0, &off, NULL);
        if (r < 0) {
            if (errno != EINTR && errno != EAGAIN)
                die("KVM_RUN");
            struct kvm_mp_state mp;
            if (ioctl(vcpu, KVM_GET_MP_STATE, &mp) < 0)
                die("KVM_GET_MP_STATE");
            if (mp.mp_state != KVM_MP_STATE_HALTED)
                halted_kicks = 0;
            else if (++halted_kicks >= 2) {
                snprintf(outcome, sizeof outcome, "hang at op %u", get32(CUR_OP));
                break;
            }
            continue;
        }
        halted_kicks = 0;
        if (run->exit_reason == KVM_EXIT_IO && run->io.direction == KVM_EXIT_IO_OUT) {
            unsigned value = 0;
            memcpy(&value, (unsigned char *)run + run->io.data_offset, run->io.size < 4 ? run->io.size : 4);
            if (run->io.port == HYPERCALL_PORT) {
                host_op(value);
                continue;
            }
            if (run->io.port == END_PORT) {
                if (value == 1)
                    snprintf(outcome, sizeof outcome, "storm");
                else if (value != 0) {
                    fprintf(stderr, "repro: the guest's event log is full\n");
                    return 2;
                }
                break;
            }
            continue; /* the 8259 mask writes */
        }
        snprintf(outcome, sizeof outcome, "error: KVM exit reason %u (during op %u)", run->exit_reason, get32(CUR_OP));
        break;
    }
    decode_log(outcome);

    int rows = observed_count > N_EXPECTED ? observed_count : N_EXPECTED, differ = observed_count != N_EXPECTED;
    printf("%-72s | %s\n", "expected (the model)", "observed (KVM)");
    for (int i = 0; i < rows; i++) {
        const char *e = i < N_EXPECTED ? EXPECTED[i] : "-";
        const char *o = i < observed_count ? observed[i] : "-";
        int same = strcmp(e, o) == 0;
        differ |= !same;
        printf("%-72s | %s%s\n", e, o, same ? "" : "   <== differs");
    }
    printf("%s\n", differ ? "result: differ" : "result: match");
    return differ ? 1 : 0;
}
