
/* The vCPUs. Each has a thread that owns its KVM_RUN; the main thread
 * conducts (irqdiff's src/backend/kvm/smp.rs): it asks one vCPU at a time
 * for a step, resuming it until its idle `out`, so exactly one vCPU runs
 * at any moment and the order is deterministic. IPIs and messages to a vCPU
 * that is not in KVM_RUN wait in its local APIC, and KVM injects them when
 * that vCPU's turn comes. */
enum step { STEP_IDLE, STEP_WAITING, STEP_END };

struct vcpu {
    int index, fd;
    struct kvm_run *run;
    pthread_t thread;
    timer_t timer;
    int asked, done;
    enum step result;
};

static int kvm_fd;
static struct vcpu cpus[N_CPUS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t changed = PTHREAD_COND_INITIALIZER;
static char outcome[512] = "completed";
static unsigned waiting; /* CPUs waiting for a SIPI, by bit */
static int log_full;
static struct timespec started;

static enum step end_error(const char *what)
{
    snprintf(outcome, sizeof outcome, "error: %s (during op %u)", what, get32(CUR_OP));
    return STEP_END;
}

static unsigned mp_state(int cpu)
{
    struct kvm_mp_state mp;
    if (ioctl(cpus[cpu].fd, KVM_GET_MP_STATE, &mp) < 0)
        die("KVM_GET_MP_STATE");
    return mp.mp_state;
}

/* Long mode, entered directly (the layout's GDT, IDT and page tables). */
static void long_mode(struct kvm_sregs *sregs)
{
    struct kvm_segment code = { .base = 0, .limit = 0xffffffff, .selector = 8, .type = 0xb, .present = 1, .s = 1, .l = 1, .g = 1 };
    struct kvm_segment data = code;
    data.selector = 0x10; data.type = 3; data.db = 1; data.l = 0;
    sregs->cs = code;
    sregs->ds = sregs->es = sregs->fs = sregs->gs = sregs->ss = data;
    sregs->gdt.base = GDT; sregs->gdt.limit = 23;
    sregs->idt.base = IDT; sregs->idt.limit = 4095;
    sregs->cr0 = 0x80050033; sregs->cr3 = PML4; sregs->cr4 = 0x20; sregs->efer = 0x500;
    sregs->cr8 = 0;
}

static void set_regs(int cpu, unsigned long long rip, unsigned long long rflags)
{
    struct kvm_regs regs;
    memset(&regs, 0, sizeof regs);
    regs.rip = rip; regs.rdi = cpu; regs.rsp = cpu_stack_top(cpu); regs.rflags = rflags;
    if (ioctl(cpus[cpu].fd, KVM_SET_REGS, &regs) < 0)
        die("KVM_SET_REGS");
}

/* The SIPI page's `out`: the AP enters long mode at the stub's SIPI entry.
 * The `out` is completed first (a KVM_RUN with immediate_exit, as KVM asks
 * before state is changed); the APIC base INIT left is kept. */
static void start_ap(struct vcpu *c)
{
    c->run->immediate_exit = 1;
    (void)ioctl(c->fd, KVM_RUN, 0);
    c->run->immediate_exit = 0;
    struct kvm_sregs sregs;
    if (ioctl(c->fd, KVM_GET_SREGS, &sregs) < 0)
        die("KVM_GET_SREGS");
    long_mode(&sregs);
    if (ioctl(c->fd, KVM_SET_SREGS, &sregs) < 0)
        die("KVM_SET_SREGS");
    set_regs(c->index, SIPI_ENTRY, 0x2);
}

static int over_limit(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec - started.tv_sec > 5;
}

/* Resumes a vCPU until its idle `out` (performing host ops and the
 * userspace IOAPIC's accesses on the way), until it waits for a SIPI, or
 * until the run ends. A halted vCPU is found by a one-shot timer signal
 * that interrupts a KVM_RUN blocked for 3 ms: halted at two kicks in a row
 * is a hang (the other CPUs are idle: nothing can wake it). */
static enum step step(struct vcpu *c)
{
    struct itimerspec kick = { .it_value = { 0, 3000000 } }, off = { { 0, 0 }, { 0, 0 } };
    int halted_kicks = 0;
    for (;;) {
        if (over_limit())
            return end_error("the guest did not finish within 5s");
        timer_settime(c->timer, 0, &kick, NULL);
        int r = ioctl(c->fd, KVM_RUN, 0);
        timer_settime(c->timer, 0, &off, NULL);
        if (r < 0) {
            if (errno != EINTR && errno != EAGAIN)
                die("KVM_RUN");
            unsigned mp = mp_state(c->index);
            if (mp == KVM_MP_STATE_INIT_RECEIVED) {
                waiting |= 1u << c->index;
                return STEP_WAITING;
            }
            if (mp != KVM_MP_STATE_HALTED)
                halted_kicks = 0;
            else if (++halted_kicks >= 2) {
                snprintf(outcome, sizeof outcome, "hang at op %u", get32(CUR_OP));
                return STEP_END;
            }
            continue;
        }
        halted_kicks = 0;
        struct kvm_run *run = c->run;
        if (run->exit_reason == KVM_EXIT_IO && run->io.direction == KVM_EXIT_IO_OUT) {
            unsigned value = 0;
            memcpy(&value, (unsigned char *)run + run->io.data_offset, run->io.size < 4 ? run->io.size : 4);
            switch (run->io.port) {
            case IDLE_PORT:
                return STEP_IDLE;
            case AP_START_PORT:
                start_ap(c);
                continue;
            case HYPERCALL_PORT:
                if (value >= sizeof HOST_OPS / sizeof HOST_OPS[0])
                    return end_error("the guest asked for a host op that does not exist");
                host_op(value);
                continue;
            case END_PORT:
                if (value == 1) {
                    snprintf(outcome, sizeof outcome, "storm");
                } else if (value == 2) {
                    log_full = 1;
                } else if (value == 3) {
                    snprintf(outcome, sizeof outcome, "error: the guest took a #GP outside the stub's RDMSR/WRMSR (during op %u)", get32(CUR_OP));
                } else if (value != 0) {
                    return end_error("bad end code");
                }
                return STEP_END;
            case 0x21: case 0xa1: case PING_PORT:
                continue; /* the 8259 mask writes */
            default:
                return end_error("unexpected out");
            }
        }
        if (SPLIT && run->exit_reason == KVM_EXIT_MMIO && run->mmio.phys_addr >= 0xfec00000ull && run->mmio.phys_addr < 0xfec01000ull) {
            uint64_t offset = run->mmio.phys_addr - 0xfec00000ull;
            if (run->mmio.is_write) {
                uint32_t value = 0;
                memcpy(&value, run->mmio.data, run->mmio.len < 4 ? run->mmio.len : 4);
                ioapic_write(offset, value);
                sync_routes();
            } else {
                uint32_t value = ioapic_read(offset);
                memcpy(run->mmio.data, &value, run->mmio.len < 4 ? run->mmio.len : 4);
            }
            continue;
        }
        if (SPLIT && run->exit_reason == KVM_EXIT_IOAPIC_EOI) {
            ioapic_eoi(run->eoi.vector);
            continue;
        }
        /* An INIT that reaches the CPU while KVM emulates its ICR write
         * resets it mid-instruction, and KVM reports an emulation failure;
         * the CPU waits for SIPI all the same. */
        if (mp_state(c->index) == KVM_MP_STATE_INIT_RECEIVED) {
            waiting |= 1u << c->index;
            return STEP_WAITING;
        }
        char what[64];
        snprintf(what, sizeof what, "KVM exit reason %u", run->exit_reason);
        return end_error(what);
    }
}


/* A vCPU's thread: its own kick timer (aimed at this thread), then one
 * step each time the conductor asks. */
static void *vcpu_thread(void *arg)
{
    struct vcpu *c = arg;
    struct sigevent sev;
    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = SIGRTMIN + 3;
    sev._sigev_un._tid = syscall(SYS_gettid);
    if (timer_create(CLOCK_MONOTONIC, &sev, &c->timer) < 0)
        die("timer_create");
    pthread_mutex_lock(&lock);
    for (;;) {
        while (!c->asked)
            pthread_cond_wait(&changed, &lock);
        c->asked = 0;
        pthread_mutex_unlock(&lock);
        enum step result = step(c);
        pthread_mutex_lock(&lock);
        c->result = result;
        c->done = 1;
        pthread_cond_broadcast(&changed);
    }
    return NULL;
}

/* One step of CPU cpu, on its thread. */
static enum step run_step(int cpu)
{
    pthread_mutex_lock(&lock);
    cpus[cpu].asked = 1;
    pthread_cond_broadcast(&changed);
    while (!cpus[cpu].done)
        pthread_cond_wait(&changed, &lock);
    cpus[cpu].done = 0;
    enum step result = cpus[cpu].result;
    pthread_mutex_unlock(&lock);
    return result;
}

/* Whether CPU cpu waits for a SIPI now (KVM_GET_MP_STATE makes KVM take a
 * pending INIT or SIPI first). */
static int is_waiting(int cpu)
{
    if (mp_state(cpu) == KVM_MP_STATE_INIT_RECEIVED)
        waiting |= 1u << cpu;
    else
        waiting &= ~(1u << cpu);
    return (waiting >> cpu) & 1;
}

/* Rounds over the running CPUs in index order until one in which no CPU
 * recorded anything. 1 if the run ended. */
static int settle(void)
{
    for (int round = 0; round < MAX_SETTLE_ROUNDS; round++) {
        struct progress before = progress();
        for (int cpu = 0; cpu < N_CPUS; cpu++) {
            if (is_waiting(cpu))
                continue;
            if (run_step(cpu) == STEP_END)
                return 1;
        }
        if (same_progress(before, progress()))
            return 0;
    }
    char what[64];
    snprintf(what, sizeof what, "the CPUs did not settle within %d rounds", MAX_SETTLE_ROUNDS);
    end_error(what);
    return 1;
}

/* The whole program: the CPUs' start, then each op on its CPU and the
 * settling after it (docs/scenario-format.md "Several CPUs"). */
static void program(void)
{
    char what[160];
    for (int cpu = 0; cpu < N_CPUS; cpu++)
        if (!((waiting >> cpu) & 1) && run_step(cpu) == STEP_END)
            return;
    for (unsigned k = 0; k < N_OPS; k++) {
        int cpu = OP_CPU[k];
        if (is_waiting(cpu)) {
            snprintf(what, sizeof what, "op %u (%s) is on CPU %d, which waits for a startup IPI", k, OP_KEYWORD[k], cpu);
            end_error(what);
            return;
        }
        post(cpu, k);
        enum step result = run_step(cpu);
        if (result == STEP_END)
            return;
        if (result == STEP_WAITING || is_waiting(cpu)) {
            snprintf(what, sizeof what, "op %u (%s): an INIT reached CPU %d, the CPU running the op (its program cannot go on)", k, OP_KEYWORD[k], cpu);
            end_error(what);
            return;
        }
        if (settle())
            return;
    }
}

int main(void)
{
    kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm_fd < 0)
        die("/dev/kvm");
    vm = ioctl(kvm_fd, KVM_CREATE_VM, 0);
    if (vm < 0)
        die("KVM_CREATE_VM");
    if (SPLIT) {
        /* KVM's local APICs, this program's IOAPIC (24 pins). */
        struct kvm_enable_cap cap = { .cap = KVM_CAP_SPLIT_IRQCHIP, .args = { 24 } };
        if (ioctl(vm, KVM_ENABLE_CAP, &cap) < 0)
            die("KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP)");
        for (int i = 0; i < 24; i++)
            rtbl[i] = 1u << 16;
    } else if (ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0) {
        die("KVM_CREATE_IRQCHIP");
    }
    ram = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (ram == MAP_FAILED)
        die("mmap");
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = RAM_SIZE, .userspace_addr = (unsigned long)ram,
    };
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
        die("KVM_SET_USER_MEMORY_REGION");
    /* Full: GSI n goes to IOAPIC pin n only. Split: the routes mirror the
     * userspace IOAPIC. */
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
    if (SPLIT)
        sync_routes();
    else if (ioctl(vm, KVM_SET_GSI_ROUTING, &routing) < 0)
        die("KVM_SET_GSI_ROUTING");
    /* No vCPU is KVM's BSP (a boot CPU id no vCPU has, and no BSP bit in
     * any APIC base): an INIT sends any CPU to wait for SIPI, as the format
     * says, where KVM's BSP would restart at the reset vector. */
    if (N_CPUS > 1) {
        unsigned long unused = 0;
        for (int again = 1; again;) {
            again = 0;
            for (int cpu = 0; cpu < N_CPUS; cpu++)
                if (VCPU_IDS[cpu] == unused) {
                    unused++;
                    again = 1;
                }
        }
        if (ioctl(vm, KVM_SET_BOOT_CPU_ID, unused) < 0)
            die("KVM_SET_BOOT_CPU_ID");
    }
    struct {
        struct kvm_cpuid2 c;
        struct kvm_cpuid_entry2 e[256];
    } cpuid;
    int run_size = ioctl(kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
    install_memory();
    install_smp();
    for (int cpu = 0; cpu < N_CPUS; cpu++) {
        struct vcpu *c = &cpus[cpu];
        c->index = cpu;
        c->fd = ioctl(vm, KVM_CREATE_VCPU, (unsigned long)VCPU_IDS[cpu]);
        if (c->fd < 0)
            die("KVM_CREATE_VCPU");
        /* The supported CPUID with the vCPU's initial APIC ID (leaf 1
         * EBX[31:24], leaves 0xB and 0x1F EDX). */
        memset(&cpuid, 0, sizeof cpuid);
        cpuid.c.nent = 256;
        if (ioctl(kvm_fd, KVM_GET_SUPPORTED_CPUID, &cpuid) < 0)
            die("KVM_GET_SUPPORTED_CPUID");
        for (unsigned i = 0; N_CPUS > 1 && i < cpuid.c.nent; i++) {
            struct kvm_cpuid_entry2 *e = &cpuid.c.entries[i];
            if (e->function == 1)
                e->ebx = (e->ebx & 0x00ffffff) | (VCPU_IDS[cpu] & 0xff) << 24;
            else if (e->function == 0xb || e->function == 0x1f)
                e->edx = VCPU_IDS[cpu];
        }
        if (ioctl(c->fd, KVM_SET_CPUID2, &cpuid) < 0)
            die("KVM_SET_CPUID2");
        c->run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, c->fd, 0);
        if (c->run == MAP_FAILED)
            die("mmap kvm_run");
        struct kvm_sregs sregs;
        if (ioctl(c->fd, KVM_GET_SREGS, &sregs) < 0)
            die("KVM_GET_SREGS");
        long_mode(&sregs);
        sregs.apic_base = N_CPUS > 1 ? 0xfee00800 : 0xfee00900;
        if (ioctl(c->fd, KVM_SET_SREGS, &sregs) < 0)
            die("KVM_SET_SREGS");
        /* The local APIC: software-enabled (SVR 0x1ff), TPR 0, every LVT
         * masked; an AP that waits for SIPI software-disabled (SVR 0xff, as
         * after RESET, SDM §11.4.7.1); aliased xAPIC IDs written into the ID
         * register (KVM keeps an xAPIC ID the VMM gives). */
        struct kvm_lapic_state lapic;
        if (ioctl(c->fd, KVM_GET_LAPIC, &lapic) < 0)
            die("KVM_GET_LAPIC");
        unsigned v32 = 0;
        memcpy(lapic.regs + 0x80, &v32, 4);
        v32 = cpu > 0 && AP_START_SIPI ? 0xff : 0x1ff;
        memcpy(lapic.regs + 0xf0, &v32, 4);
        v32 = 0x10000;
        for (int off = 0x320; off <= 0x370; off += 0x10)
            memcpy(lapic.regs + off, &v32, 4);
        if (ALIASED) {
            v32 = APIC_IDS[cpu] << 24;
            memcpy(lapic.regs + 0x20, &v32, 4);
        }
        if (ioctl(c->fd, KVM_SET_LAPIC, &lapic) < 0)
            die("KVM_SET_LAPIC");
        /* Runnable (KVM starts a vCPU that is not its BSP uninitialised,
         * waiting for INIT), or waiting for SIPI (`ap-start=sipi`). */
        int sipi = cpu > 0 && AP_START_SIPI;
        struct kvm_mp_state mp = { sipi ? KVM_MP_STATE_INIT_RECEIVED : KVM_MP_STATE_RUNNABLE };
        if (ioctl(c->fd, KVM_SET_MP_STATE, &mp) < 0)
            die("KVM_SET_MP_STATE");
        if (sipi)
            waiting |= 1u << cpu;
        if (cpu == 0)
            set_regs(0, STUB_ENTRY, 0x202);
        else
            set_regs(cpu, AP_ENTRY, 0x2);
    }
    /* The IOAPIC: every entry masked with vector 0; the 8259s masked. */
    if (!SPLIT) {
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
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_kick;
    sigaction(SIGRTMIN + 3, &sa, NULL);
    for (int cpu = 0; cpu < N_CPUS; cpu++)
        if (pthread_create(&cpus[cpu].thread, NULL, vcpu_thread, &cpus[cpu]) != 0)
            die("pthread_create");
    clock_gettime(CLOCK_MONOTONIC, &started);
    program();
    if (log_full) {
        fprintf(stderr, "repro: the guest's event log is full\n");
        return 2;
    }
    decode_logs(outcome);
    return report();
}
