static int vm;
static void on_kick(int sig) { (void)sig; }

static void irq_line(int pin, int level)
{
    /* KVM's in-kernel IOAPIC takes the level as the request itself. */
    struct kvm_irq_level l = { .irq = pin, .level = level };
    if (ioctl(vm, KVM_IRQ_LINE, &l) < 0)
        die("KVM_IRQ_LINE");
}

static void signal_msi(unsigned long long addr, unsigned data)
{
    struct kvm_msi msi;
    memset(&msi, 0, sizeof msi);
    msi.address_lo = (unsigned)addr;
    msi.address_hi = (unsigned)(addr >> 32);
    msi.data = data;
    /* KVM's slow delivery path (mixed or aliased APIC maps) returns -EPERM
     * for a message no APIC accepted: an undelivered message, not a failure. */
    if (ioctl(vm, KVM_SIGNAL_MSI, &msi) < 0 && errno != EPERM)
        die("KVM_SIGNAL_MSI");
}

/* The MSI an IOAPIC entry sends (SDM §11.11): destination and mode in the
 * address, vector, delivery mode and trigger in the data. */
static void entry_msi(uint64_t e, unsigned long long *addr, unsigned *data)
{
    *addr = 0xfee00000ull | ((e >> 56) & 0xff) << 12 | ((e >> 11) & 1) << 2;
    *data = (unsigned)(e & 0xff) | (unsigned)((e >> 8) & 7) << 8 | (unsigned)((e >> 15) & 1) * (3u << 14);
}

static void deliver_entry(uint64_t e)
{
    unsigned long long addr;
    unsigned data;
    entry_msi(e, &addr, &data);
    signal_msi(addr, data);
}

/* Split irqchip: KVM exits on the EOI of a level vector only if its GSI
 * routing table has that vector as a level MSI (kvm_scan_ioapic_routes),
 * so the routes mirror the IOAPIC's entries, masked ones included: a
 * masked entry's remote IRR is still reset by the EOI (82093AA 3.2.4). */
static void sync_routes(void)
{
    struct {
        struct kvm_irq_routing r;
        struct kvm_irq_routing_entry e[24];
    } routing;
    memset(&routing, 0, sizeof routing);
    routing.r.nr = 24;
    for (int i = 0; i < 24; i++) {
        unsigned long long addr;
        unsigned data;
        entry_msi(rtbl[i], &addr, &data);
        routing.e[i].gsi = i;
        routing.e[i].type = KVM_IRQ_ROUTING_MSI;
        routing.e[i].u.msi.address_lo = (unsigned)addr;
        routing.e[i].u.msi.data = data;
    }
    if (ioctl(vm, KVM_SET_GSI_ROUTING, &routing) < 0)
        die("KVM_SET_GSI_ROUTING");
}

static void drive(int pin, int level)
{
    if (SPLIT)
        ioapic_set_irq(pin, level);
    else
        irq_line(pin, level);
}

static void host_op(unsigned n)
{
    const struct host_op *op = &HOST_OPS[n];
    switch (op->kind) {
    case 0: drive(op->pin, 1); break;
    case 1: drive(op->pin, 0); break;
    case 2: drive(op->pin, 1); drive(op->pin, 0); break;
    case 3: signal_msi(op->addr, op->data); break;
    }
}

