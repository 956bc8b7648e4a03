int main(void)
{
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0)
        die("/dev/kvm");
    vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0)
        die("KVM_CREATE_VM");
    if (SPLIT) {
        /* KVM's local APIC, this program's IOAPIC (24 pins). */
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
    /* Full: GSI n goes to IOAPIC pin n only, the 8259 is not in the path.
     * Split: the routes mirror the userspace IOAPIC. */
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

    install_memory();

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
    if (!SPLIT) {
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
        snprintf(outcome, sizeof outcome, "error: KVM exit reason %u (during op %u)", run->exit_reason, get32(CUR_OP));
        break;
    }
    decode_log(outcome);

    return report();
}
