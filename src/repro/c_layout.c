#define MAYBE_UNUSED __attribute__((unused))
/* Guest memory layout and ports of irqdiff's guest stub (src/guest/layout.rs). */
#define RAM_SIZE (4u << 20)
#define GDT 0x1000
#define IDT 0x2000
#define PML4 0x3000
#define PDPT 0x4000
#define PD 0xb000
#define CODE 0x10000
#define STACK_TOP 0x1f000
#define DATA 0x20000
#define CUR_OP (DATA)
#define DELIVERIES (DATA + 0x4)
#define X2APIC_FLAG (DATA + 0x8)
#define LOG_PTR (DATA + 0x10)
#define TSC_PER_US (DATA + 0xf8)
#define BODY_DIR (DATA + 0x800)
#define NTH_TABLE (DATA + 0x1000)
#define OPS (DATA + 0x2000)
#define LOG 0x100000
#define HYPERCALL_PORT 0x510
#define END_PORT 0x511

struct host_op {
    int kind;
    int pin;
    unsigned long long addr;
    unsigned data;
};

