
/* Several CPUs, whatever the VMM: the per-CPU blocks, loading them, posting
 * an op to a CPU's mailbox, the settling test, and the CPUs' logs merged
 * (docs/guest-stub.md "Several CPUs"; src/guest/mod.rs, Image::load_smp). */
static unsigned long long cpu_block(int cpu) { return cpu == 0 ? DATA : AP_BLOCKS + (unsigned long long)(cpu - 1) * AP_STRIDE; }
static unsigned long long cpu_stack_top(int cpu) { return cpu == 0 ? STACK_TOP : cpu_block(cpu) + AP_STACK_TOP; }
static unsigned long long cpu_log_start(int cpu) { return cpu == 0 ? LOG : cpu_block(cpu) + AP_LOG; }
static unsigned long long cpu_log_end(int cpu) { return cpu == 0 ? LOG_END : cpu_block(cpu) + AP_STRIDE; }
static unsigned long long get64(unsigned long long at) { unsigned long long v; memcpy(&v, ram + at, 8); return v; }

/* After install_memory(): the SIPI page, the SMP globals and each CPU's
 * block (mailbox, index; for CPU K >= 1 its mode flag, log pointer, #GP
 * flag, counts and handler tables). */
static void install_smp(void)
{
    memcpy(ram + SIPI_PAGE, SIPI_PAGE_CODE, sizeof SIPI_PAGE_CODE);
    put32(SMP_FLAG, 1);
    put32(CPUS_VAR, N_CPUS);
    for (int cpu = 0; cpu < N_CPUS; cpu++) {
        unsigned long long block = cpu_block(cpu);
        put32(block + PCPU_MAILBOX, 0);
        put32(block + PCPU_OPS_DONE, 0);
        put32(block + PCPU_INDEX, cpu);
        if (cpu == 0)
            continue;
        put32(block + PCPU_X2APIC, X2APIC);
        put64(block + PCPU_LOG_PTR, cpu_log_start(cpu));
        put32(block + PCPU_GP_FAULTED, 0);
        memset(ram + block + PCPU_COUNTS, 0, 1024);
        if (AP_BODY_DIRS[cpu]) {
            memcpy(ram + block + PCPU_BODY_DIR, AP_BODY_DIRS[cpu], AP_TABLE_SIZES[cpu][0]);
            memcpy(ram + block + PCPU_NTH_TABLE, AP_NTHS[cpu], AP_TABLE_SIZES[cpu][1]);
        }
    }
}

/* Top-level op k to CPU cpu's mailbox; every CPU's records carry it. */
static void post(int cpu, unsigned k)
{
    put32(cpu_block(cpu) + PCPU_MAILBOX, k + 1);
    put32(CUR_OP, k);
}

/* Changes whenever a CPU records anything: the log pointers and the
 * delivery count (the test for a settling round that changed nothing). */
struct progress { unsigned long long logs; unsigned deliveries; };
static struct progress progress(void)
{
    struct progress p = { 0, get32(DELIVERIES) };
    for (int cpu = 0; cpu < N_CPUS; cpu++)
        p.logs += get64(cpu_block(cpu) + PCPU_LOG_PTR);
    return p;
}

static int same_progress(struct progress a, struct progress b) { return a.logs == b.logs && a.deliveries == b.deliveries; }

/* Every CPU's log decoded, merged by op: CPU 0's events of an op first, each
 * CPU's in the order it observed them, tagged with the CPU; where a
 * lowest-priority message makes the CPU open (CPUS_COMPARED = 0), untagged
 * and sorted within the op, as the expected lines are. */
struct record { unsigned op; int cpu, seq; char body[480]; };
static struct record records[4096];
static int n_records;

static int by_op_then_cpu(const void *x, const void *y)
{
    const struct record *a = x, *b = y;
    if (a->op != b->op)
        return a->op < b->op ? -1 : 1;
    if (!CPUS_COMPARED) {
        int c = strcmp(a->body, b->body);
        if (c)
            return c;
    }
    if (a->cpu != b->cpu)
        return a->cpu < b->cpu ? -1 : 1;
    return a->seq - b->seq;
}

static void decode_logs(const char *outcome)
{
    for (int cpu = 0; cpu < N_CPUS; cpu++) {
        unsigned long long start = cpu_log_start(cpu), end = get64(cpu_block(cpu) + PCPU_LOG_PTR), p = start;
        if (end > cpu_log_end(cpu))
            end = cpu_log_end(cpu);
        while (p && p < end && n_records < 4095) {
            struct record *r = &records[n_records];
            r->cpu = cpu;
            r->seq = n_records++;
            p = decode_record(p, &r->op, r->body);
        }
    }
    qsort(records, n_records, sizeof records[0], by_op_then_cpu);
    for (int i = 0; i < n_records && observed_count < 4095; i++) {
        if (CPUS_COMPARED)
            snprintf(observed[observed_count++], 512, "op %u [cpu %d] %s", records[i].op, records[i].cpu, records[i].body);
        else
            snprintf(observed[observed_count++], 512, "op %u %s", records[i].op, records[i].body);
    }
    snprintf(observed[observed_count++], 512, "%s", outcome);
}
