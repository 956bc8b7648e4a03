
/* The vCPUs. hv.h: hv_vcpu_create makes a vCPU for the calling thread, and
 * only that thread may use it; so each CPU has a thread that creates, runs
 * and destroys its vCPU, doing what the main thread (the conductor) asks.
 * The conductor follows irqdiff's hvf VMM (src/backend/hvf/vmm/smp.rs):
 * one CPU at a time runs to its idle `out`, so the order is deterministic,
 * and an interrupt or IPI to a CPU that is not running waits in its
 * in-kernel APIC for its turn.
 *
 * INIT and STARTUP IPIs go through the in-kernel APIC, which resets an
 * INIT's targets and hands the IPI back as an exit of the sender
 * (hv_vcpu_exit_init_ap, hv_vcpu_exit_startup_ap: the targets by vCPU ID,
 * and the start page). As pmj's QEMU does, a target of INIT that runs waits
 * for SIPI (the conductor runs it no more), one waiting already is left
 * alone; a target of STARTUP that waits is started, on its own thread, at
 * its next turn: at the stub's SIPI entry in long mode, the state the SIPI
 * page's `out` (port 0x513) would ask for. */
enum job { JOB_NONE, JOB_CREATE, JOB_STEP, JOB_DESTROY };
enum step { STEP_IDLE, STEP_END };

struct cpu {
    int index;
    pthread_t thread;
    enum job job;
    int done;
    enum step result;
};

static struct cpu cpus[N_CPUS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t changed = PTHREAD_COND_INITIALIZER;
static char outcome[512] = "completed";
/* By bit: the CPUs waiting for a SIPI (not resumed), and those a STARTUP
 * IPI started (started at their next turn). Touched by one thread at a
 * time: the conductor, or the CPU it waits for. */
static unsigned waiting, starting;
static struct timespec started;

static enum step end_error(const char *what)
{
    snprintf(outcome, sizeof outcome, "error: %s (during op %u)", what, get32(CUR_OP));
    return STEP_END;
}

/* The ports of the multi-CPU protocol (docs/guest-stub.md "Several CPUs"). */
static enum exit_result smp_out(unsigned port, char *out, size_t size)
{
    if (port == IDLE_PORT)
        return EXIT_IDLE;
    if (port == PING_PORT)
        return EXIT_RESUME;
    if (port == AP_START_PORT)
        snprintf(out, size, "error: an out to the SIPI page's port 0x513: APs start at sipi_entry on STARTUP_AP (during op %u)", get32(CUR_OP));
    else
        snprintf(out, size, "error: unexpected out to port %#x (during op %u)", port, get32(CUR_OP));
    return EXIT_END;
}

/* HV_VM_EXITINFO_INIT_AP or STARTUP_AP on the sending vCPU. */
static enum exit_result ap_exit(hv_vm_exitinfo_t info, char *out, size_t size)
{
    bool targets[N_CPUS];
    if (info == HV_VM_EXITINFO_INIT_AP) {
        check(hv_vcpu_exit_init_ap(vcpu, targets, N_CPUS), "hv_vcpu_exit_init_ap");
        for (int i = 0; i < N_CPUS; i++)
            if (targets[i]) {
                waiting |= 1u << i;
                starting &= ~(1u << i);
            }
        return EXIT_RESUME;
    }
    uint64_t ap_rip;
    check(hv_vcpu_exit_startup_ap(vcpu, targets, N_CPUS, &ap_rip), "hv_vcpu_exit_startup_ap");
    if (ap_rip != SIPI_PAGE) {
        snprintf(out, size, "error: a STARTUP IPI to %#llx: the stub's SIPI page is at %#llx (during op %u)",
                 (unsigned long long)ap_rip, SIPI_PAGE, get32(CUR_OP));
        return EXIT_END;
    }
    for (int i = 0; i < N_CPUS; i++)
        if (targets[i] && (waiting >> i & 1)) {
            waiting &= ~(1u << i);
            starting |= 1u << i;
        }
    return EXIT_RESUME;
}

/* An entry's registers: RIP, EDI = the CPU index, its stack, RFLAGS. */
static void start_regs(int cpu, uint64_t rip, uint64_t rflags)
{
    wreg(HV_X86_RIP, rip);
    wreg(HV_X86_RDI, (uint64_t)cpu);
    wreg(HV_X86_RSP, cpu_stack_top(cpu));
    wreg(HV_X86_RFLAGS, rflags);
}

/* On CPU cpu's thread: its vCPU, whose ID must be the CPU index (the
 * in-kernel APIC's ID is the vCPU ID); CPU 0 at the stub's entry with
 * IF = 1, an AP at its entry with IF = 0 and, for ap-start=sipi, its APIC
 * software-disabled, as after RESET (SDM 11.4.7.1). */
static void create_vcpu(int cpu)
{
    bring_up(cpu > 0 && AP_START_SIPI ? 0xff : 0x1ff);
    if (vcpu != (hv_vcpuid_t)cpu) {
        fprintf(stderr, "repro: the framework gave CPU %d vCPU ID %u\n", cpu, (unsigned)vcpu);
        cannot_run("the vCPU IDs (the in-kernel APIC IDs) are not the CPU indexes");
    }
    if (cpu == 0 && !SPLIT)
        check_ioapic_identity();
    if (cpu == 0)
        start_regs(0, STUB_ENTRY, 0x202);
    else
        start_regs(cpu, AP_ENTRY, 0x2);
}

/* A STARTUP IPI started this AP: no HLT activity, blocking or event to
 * inject left from before the INIT (SDM 24.4.2, 24.8.3), then the SIPI
 * entry. */
static void start_ap(int cpu)
{
    wvmcs(VMCS_GUEST_ACTIVITY_STATE, 0);
    wvmcs(VMCS_GUEST_INTERRUPTIBILITY, 0);
    wvmcs(VMCS_CTRL_VMENTRY_IRQ_INFO, 0);
    start_regs(cpu, SIPI_ENTRY, 0x2);
}

static int over_limit(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec - started.tv_sec > 5;
}

/* On the CPU's thread: runs its vCPU until its idle `out` or the end of the
 * run (a STARTUP IPI's target started first). */
static enum step step(struct cpu *c)
{
    if (starting >> c->index & 1) {
        starting &= ~(1u << c->index);
        start_ap(c->index);
    }
    struct quiet quiet = { 0, 0, 0 };
    for (;;) {
        if (over_limit())
            return end_error("the guest did not finish within 5s");
        enum exit_result r = run_once(&quiet, outcome, sizeof outcome);
        if (r == EXIT_IDLE)
            return STEP_IDLE;
        if (r == EXIT_END)
            return STEP_END;
    }
}

/* A CPU's thread: each job the conductor gives, until its vCPU is gone. */
static void *vcpu_thread(void *arg)
{
    struct cpu *c = arg;
    pthread_mutex_lock(&lock);
    for (;;) {
        while (c->job == JOB_NONE)
            pthread_cond_wait(&changed, &lock);
        enum job job = c->job;
        pthread_mutex_unlock(&lock);
        if (job == JOB_CREATE)
            create_vcpu(c->index);
        else if (job == JOB_STEP)
            c->result = step(c);
        else
            check(hv_vcpu_destroy(vcpu), "hv_vcpu_destroy");
        pthread_mutex_lock(&lock);
        c->job = JOB_NONE;
        c->done = 1;
        pthread_cond_broadcast(&changed);
        if (job == JOB_DESTROY)
            break;
    }
    pthread_mutex_unlock(&lock);
    return NULL;
}

/* Has CPU cpu's thread do job, and waits for it. */
static void on_cpu(int cpu, enum job job)
{
    pthread_mutex_lock(&lock);
    cpus[cpu].job = job;
    pthread_cond_broadcast(&changed);
    while (!cpus[cpu].done)
        pthread_cond_wait(&changed, &lock);
    cpus[cpu].done = 0;
    pthread_mutex_unlock(&lock);
}

static enum step run_step(int cpu)
{
    on_cpu(cpu, JOB_STEP);
    return cpus[cpu].result;
}

static int is_waiting(int cpu) { return waiting >> cpu & 1; }

/* Rounds over the running CPUs in index order until one in which no CPU
 * recorded anything and none began or stopped waiting. 1 if the run
 * ended. */
static int settle(void)
{
    for (int round = 0; round < MAX_SETTLE_ROUNDS; round++) {
        struct progress before = progress();
        unsigned waiting_before = waiting;
        for (int cpu = 0; cpu < N_CPUS; cpu++) {
            if (is_waiting(cpu))
                continue;
            if (run_step(cpu) == STEP_END)
                return 1;
        }
        if (same_progress(before, progress()) && waiting == waiting_before)
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
        if (!is_waiting(cpu) && run_step(cpu) == STEP_END)
            return;
    for (unsigned k = 0; k < N_OPS; k++) {
        int cpu = OP_CPU[k];
        if (is_waiting(cpu)) {
            snprintf(what, sizeof what, "op %u (%s) is on CPU %d, which waits for a startup IPI", k, OP_KEYWORD[k], cpu);
            end_error(what);
            return;
        }
        post(cpu, k);
        if (run_step(cpu) == STEP_END)
            return;
        if (is_waiting(cpu)) {
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
    /* Seed step 1: the VM with the in-kernel APIC, IOAPIC and ATPIC. */
    check(hv_vm_create(HV_VM_ACCEL_APIC), "hv_vm_create(HV_VM_ACCEL_APIC)");
    void *memory;
    if ((errno = posix_memalign(&memory, 4096, RAM_SIZE)))
        die("posix_memalign");
    ram = memory;
    memset(ram, 0, RAM_SIZE);
    install_memory();
    install_smp();
    check(hv_vm_map(ram, 0, RAM_SIZE, HV_MEMORY_READ | HV_MEMORY_WRITE | HV_MEMORY_EXEC), "hv_vm_map");
    for (int i = 0; i < 24; i++)
        rtbl[i] = 1u << 16;
    /* One thread per CPU, each vCPU created in index order (vCPU ID = the
     * CPU index); the APs of ap-start=sipi wait for a SIPI. */
    for (int cpu = 0; cpu < N_CPUS; cpu++) {
        cpus[cpu].index = cpu;
        if ((errno = pthread_create(&cpus[cpu].thread, NULL, vcpu_thread, &cpus[cpu])))
            die("pthread_create");
        on_cpu(cpu, JOB_CREATE);
        if (cpu > 0 && AP_START_SIPI)
            waiting |= 1u << cpu;
    }

    pthread_t kicker;
    if ((errno = pthread_create(&kicker, NULL, watchdog, NULL)))
        die("pthread_create");
    clock_gettime(CLOCK_MONOTONIC, &started);
    program();
    atomic_store(&watchdog_stop, 1);
    if ((errno = pthread_join(kicker, NULL)))
        die("pthread_join");
    if (strcmp(outcome, "log full") == 0) {
        fprintf(stderr, "repro: the guest's event log is full\n");
        return 2;
    }
    decode_logs(outcome);
    /* Every vCPU, highest first, on its own thread, before the VM. */
    for (int cpu = N_CPUS - 1; cpu >= 0; cpu--) {
        on_cpu(cpu, JOB_DESTROY);
        if ((errno = pthread_join(cpus[cpu].thread, NULL)))
            die("pthread_join");
    }
    check(hv_vm_destroy(), "hv_vm_destroy");
    return report();
}
