
/* One CPU: no multi-CPU port exists (an out to another port is ignored, as
 * the stub's ping), and no INIT or STARTUP IPI has a target. */
static enum exit_result smp_out(unsigned port, char *outcome, size_t size)
{
    (void)port, (void)outcome, (void)size;
    return EXIT_RESUME;
}

static enum exit_result ap_exit(hv_vm_exitinfo_t info, char *outcome, size_t size)
{
    snprintf(outcome, size, "error: an INIT or STARTUP IPI (exit info %llu) in a run of one CPU", (unsigned long long)info);
    return EXIT_END;
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
    check(hv_vm_map(ram, 0, RAM_SIZE, HV_MEMORY_READ | HV_MEMORY_WRITE | HV_MEMORY_EXEC), "hv_vm_map");
    bring_up(0x1ff);
    if (!SPLIT)
        check_ioapic_identity();
    for (int i = 0; i < 24; i++)
        rtbl[i] = 1u << 16;
    wreg(HV_X86_RIP, STUB_ENTRY);
    wreg(HV_X86_RSP, STACK_TOP);
    wreg(HV_X86_RFLAGS, 0x202);

    pthread_t kicker;
    if ((errno = pthread_create(&kicker, NULL, watchdog, NULL)))
        die("pthread_create");
    char outcome[128] = "completed";
    struct quiet quiet = { 0, 0, 0 };
    while (run_once(&quiet, outcome, sizeof outcome) != EXIT_END)
        ;
    atomic_store(&watchdog_stop, 1);
    if ((errno = pthread_join(kicker, NULL)))
        die("pthread_join");
    if (strcmp(outcome, "log full") == 0) {
        fprintf(stderr, "repro: the guest's event log is full\n");
        return 2;
    }
    decode_log(outcome);
    /* The vCPU goes before the VM. */
    check(hv_vcpu_destroy(vcpu), "hv_vcpu_destroy");
    check(hv_vm_destroy(), "hv_vm_destroy");
    return report();
}
