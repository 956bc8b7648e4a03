
static unsigned char *ram;

static void die(const char *what)
{
    fprintf(stderr, "repro: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void put32(unsigned long long at, unsigned v) { memcpy(ram + at, &v, 4); }
static void put64(unsigned long long at, unsigned long long v) { memcpy(ram + at, &v, 8); }
static unsigned get32(unsigned long long at) { unsigned v; memcpy(&v, ram + at, 4); return v; }

static int observed_count;
static char observed[4096][512];

/* Decodes the log record at guest address p into its op and text (what
 * follows "op N "): the address of the next record, 0 if it is corrupt. */
static unsigned long long decode_record(unsigned long long p, unsigned *op, char *line)
{
    unsigned kind = get32(p);
    *op = get32(p + 4);
    if (kind == 1) {
        snprintf(line, 480, "deliver 0x%02x", get32(p + 8) & 0xff);
        return p + 16;
    } else if (kind == 3 || kind == 4) {
        snprintf(line, 480, "read %s[0x%x] = 0x%x", kind == 3 ? "ioapic" : "lapic", get32(p + 8), get32(p + 12));
        return p + 16;
    } else if (kind == 6) {
        snprintf(line, 480, "read lapic-mmio[0x%x] = 0x%x", get32(p + 8), get32(p + 12));
        return p + 16;
    } else if (kind == 10) {
        /* tsc-deadline-read: the MSR, 0 or 1 (zero or not). */
        snprintf(line, 480, "read msr[0x%x] = 0x%x", get32(p + 8), get32(p + 12));
        return p + 16;
    } else if (kind == 5) {
        snprintf(line, 480, "exception %u", get32(p + 8) & 0xff);
        return p + 16;
    } else if (kind == 2) {
        unsigned w[50], remote = 0, status = 0;
        int n = snprintf(line, 480, "snapshot");
        for (int i = 0; i < 50; i++)
            w[i] = get32(p + 8 + 4 * i);
        for (int reg = 0; reg < 3; reg++) {
            n += snprintf(line + n, 480 - n, " %s=", reg == 0 ? "irr" : reg == 1 ? "isr" : "tmr");
            for (int i = 7; i >= 0; i--)
                n += snprintf(line + n, 480 - n, "%08x", w[reg * 8 + i]);
        }
        for (int pin = 0; pin < 24; pin++) {
            remote |= ((w[26 + pin] >> 14) & 1u) << pin;
            status |= ((w[26 + pin] >> 12) & 1u) << pin;
        }
        snprintf(line + n, 480 - n, " tpr=%02x ppr=%02x remote_irr=%06x delivery_status=%06x", w[24] & 0xff, w[25] & 0xff, remote, status);
        return p + 52 * 4;
    }
    snprintf(line, 480, "corrupt log record kind %u", kind);
    return 0;
}

static MAYBE_UNUSED void decode_log(const char *outcome)
{
    unsigned long long end, p = LOG;
    memcpy(&end, ram + LOG_PTR, 8);
    while (p && p < end && observed_count < 4095) {
        char body[480];
        unsigned op;
        p = decode_record(p, &op, body);
        if (p)
            snprintf(observed[observed_count++], 512, "op %u %s", op, body);
        else
            snprintf(observed[observed_count++], 512, "%s", body);
    }
    snprintf(observed[observed_count++], 512, "%s", outcome);
}

/* TSC cycles per microsecond, for the stub's `timer-wait` bound: the
 * host's TSC against CLOCK_MONOTONIC over 10 ms (a guest's TSC runs at the
 * host's rate unless the hypervisor scales it). */
static unsigned tsc_per_us(void)
{
    struct timespec a, b;
    long long ns;
    clock_gettime(CLOCK_MONOTONIC, &a);
    unsigned long long t0 = __builtin_ia32_rdtsc();
    do {
        clock_gettime(CLOCK_MONOTONIC, &b);
        ns = (b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec);
    } while (ns < 10000000LL);
    unsigned long long rate = (__builtin_ia32_rdtsc() - t0) * 1000 / (unsigned long long)ns;
    return rate ? (unsigned)rate : 1;
}

/* Guest memory: GDT, IDT (64-bit interrupt gates), identity-mapped page
 * tables (2 MiB pages, the APIC pages uncached), the stub and the tables. */
static void install_memory(void)
{
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
    put32(DATA + 0xc, END_PORT); /* the stub's end-of-run port */
    put32(TSC_PER_US, tsc_per_us());
    memcpy(ram + BODY_DIR, BODY_DIR_TABLE, sizeof BODY_DIR_TABLE);
    memcpy(ram + NTH_TABLE, NTH_TABLE_BYTES, sizeof NTH_TABLE_BYTES);
    memcpy(ram + OPS, OPS_TABLE, sizeof OPS_TABLE);

}

/* Prints expected and observed side by side; 0 if they match, 1 if not. */
static int report(void)
{
    int rows = observed_count > N_EXPECTED ? observed_count : N_EXPECTED, differ = observed_count != N_EXPECTED;
    printf("%-72s | %s\n", "expected (the model)", OBSERVED_BY);
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

/* The split shape: a minimal userspace IOAPIC (82093AA §3.2.4: edge and
 * level inputs, mask, remote IRR set on delivery and cleared by the EOI of
 * the entry's vector, a level still asserted at EOI sent again). */
static MAYBE_UNUSED uint64_t rtbl[24];
static MAYBE_UNUSED uint32_t ioregsel, line_level;

/* How the VMM sends an entry's interrupt (defined by each VMM below). */
static void deliver_entry(uint64_t entry);

static MAYBE_UNUSED void ioapic_send(int pin)
{
    uint64_t e = rtbl[pin];
    if (e & (1u << 16))
        return;
    deliver_entry(e);
    if (e & (1u << 15))
        rtbl[pin] |= 1u << 14;
}

static MAYBE_UNUSED void ioapic_set_irq(int pin, int level)
{
    uint32_t was = (line_level >> pin) & 1;
    line_level = level ? line_level | (1u << pin) : line_level & ~(1u << pin);
    uint64_t e = rtbl[pin];
    if (!level)
        return;
    if (e & (1u << 15)) {
        if (!(e & (1u << 14)))
            ioapic_send(pin);
    } else if (!was) {
        ioapic_send(pin);
    }
}

static MAYBE_UNUSED void ioapic_eoi(unsigned vector)
{
    for (int pin = 0; pin < 24; pin++) {
        uint64_t e = rtbl[pin];
        if ((e & 0xff) == vector && (e & (1u << 15)) && (e & (1u << 14))) {
            rtbl[pin] &= ~(1ull << 14);
            if ((line_level >> pin) & 1)
                ioapic_send(pin);
        }
    }
}

static MAYBE_UNUSED uint32_t ioapic_read(uint64_t offset)
{
    if (offset == 0)
        return ioregsel;
    if (offset != 0x10)
        return 0;
    if (ioregsel == 1)
        return 0x00170000 | IOAPIC_VERSION;
    if (ioregsel >= 0x10 && ioregsel < 0x40) {
        uint64_t e = rtbl[(ioregsel - 0x10) / 2];
        return ioregsel & 1 ? (uint32_t)(e >> 32) : (uint32_t)e;
    }
    return 0;
}

static MAYBE_UNUSED void ioapic_write(uint64_t offset, uint32_t value)
{
    if (offset == 0) {
        ioregsel = value & 0xff;
    } else if (offset == 0x40 && IOAPIC_VERSION == 0x20) {
        ioapic_eoi(value & 0xff);
    } else if (offset == 0x10 && ioregsel >= 0x10 && ioregsel < 0x40) {
        int pin = (ioregsel - 0x10) / 2;
        uint64_t e = rtbl[pin], ro = e & ((1ull << 12) | (1ull << 14));
        if (ioregsel & 1)
            e = (e & 0xffffffffull) | ((uint64_t)value << 32);
        else
            e = (e & ~0xffffffffull) | value;
        e = (e & ~((1ull << 12) | (1ull << 14))) | ro;
        if (!(e & (1u << 15)))
            e &= ~(1ull << 14);
        rtbl[pin] = e;
        if (!(e & (1u << 16)) && (e & (1u << 15)) && !(e & (1u << 14)) && ((line_level >> pin) & 1))
            ioapic_send(pin);
    }
}

