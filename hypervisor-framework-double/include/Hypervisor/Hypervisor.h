/* GENERATED FILE: `cargo run -p hypervisor-framework-double --example write-header`
* wrote it from the tables in hypervisor-framework-sys/src/lib.rs (the same
* tables as the Rust FFI). Do not edit: change the tables and regenerate.
*
* The subset of Apple's Hypervisor.framework x86_64 headers (hv.h, hv_vmx.h,
* hv_types.h, hv_error.h, hv_arch_x86.h, hv_arch_vmx.h, hv_arch_vmcs.h,
* hv_intr.h) that irqdiff's C repros use, with Apple's names and values.
* On a Mac the SDK's <Hypervisor/Hypervisor.h> is used instead; elsewhere
* this one, with libhypervisor_framework_double as the implementation. */
#ifndef IRQDIFF_HYPERVISOR_H
#define IRQDIFF_HYPERVISOR_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef int hv_return_t;
typedef uint64_t hv_vm_options_t;
typedef uint64_t hv_vcpu_options_t;
typedef uint64_t hv_memory_flags_t;
typedef unsigned hv_vcpuid_t;
typedef uint64_t hv_gpaddr_t;
typedef const void *hv_uvaddr_t;
typedef uint32_t hv_x86_reg_t;
typedef uint32_t hv_vm_exitinfo_t;
typedef uint64_t hv_apic_ctrl_t;
typedef uint32_t hv_apic_intr_trigger_t;
typedef struct { uint32_t version; struct { uint64_t rtbl[32]; uint32_t irr; uint32_t ioa_id; uint32_t ioregsel; } state; } hv_ioapic_state_ext_t;
typedef struct { uint32_t version; uint64_t state[30]; } hv_apic_state_ext_t;

#define HV_SUCCESS ((hv_return_t)0x0)
#define HV_ERROR ((hv_return_t)0xfae94001)
#define HV_BUSY ((hv_return_t)0xfae94002)
#define HV_BAD_ARGUMENT ((hv_return_t)0xfae94003)
#define HV_NO_RESOURCES ((hv_return_t)0xfae94005)
#define HV_NO_DEVICE ((hv_return_t)0xfae94006)
#define HV_DENIED ((hv_return_t)0xfae94007)
#define HV_FAULT ((hv_return_t)0xfae94008)
#define HV_UNSUPPORTED ((hv_return_t)0xfae9400f)
#define HV_VM_DEFAULT 0x0ULL
#define HV_VM_ACCEL_APIC 0x400ULL
#define HV_VCPU_DEFAULT 0x0ULL
#define HV_MEMORY_READ 0x1ULL
#define HV_MEMORY_WRITE 0x2ULL
#define HV_MEMORY_EXEC 0x4ULL
#define HV_DEADLINE_FOREVER (~0ULL)
#define HV_VM_EXITINFO_VMX 0x1ULL
#define HV_VM_EXITINFO_INIT_AP 0x2ULL
#define HV_VM_EXITINFO_STARTUP_AP 0x3ULL
#define HV_VM_EXITINFO_IOAPIC_EOI 0x4ULL
#define HV_VM_EXITINFO_INJECT_EXCP 0x5ULL
#define HV_VM_EXITINFO_SMI 0x6ULL
#define HV_VM_EXITINFO_APIC_ACCESS_READ 0x7ULL
#define HV_APIC_CTRL_DEFAULT 0x0ULL
#define HV_APIC_CTRL_EOI_ICR_TPR 0x1ULL
#define HV_APIC_CTRL_GUEST_IDLE 0x2ULL
#define HV_APIC_CTRL_NO_TIMER 0x4ULL
#define HV_APIC_CTRL_IOAPIC_EOI 0x8ULL
#define HV_APIC_EDGE_TRIGGER 0x0ULL
#define HV_APIC_EDGE_TRIGGER_AEOI 0x1ULL
#define HV_APIC_LEVEL_TRIGGER 0x2ULL
#define HV_X86_RIP 0x0ULL
#define HV_X86_RFLAGS 0x1ULL
#define HV_X86_RAX 0x2ULL
#define HV_X86_RCX 0x3ULL
#define HV_X86_RDX 0x4ULL
#define HV_X86_RBX 0x5ULL
#define HV_X86_RSI 0x6ULL
#define HV_X86_RDI 0x7ULL
#define HV_X86_RSP 0x8ULL
#define HV_X86_RBP 0x9ULL
#define HV_X86_R8 0xaULL
#define HV_X86_R15 0x11ULL
#define HV_X86_CR0 0x24ULL
#define HV_X86_CR3 0x27ULL
#define HV_X86_CR4 0x28ULL
#define HV_X86_TPR 0x31ULL
#define HV_VMX_CAP_PINBASED 0x0ULL
#define HV_VMX_CAP_PROCBASED 0x1ULL
#define HV_VMX_CAP_PROCBASED2 0x2ULL
#define HV_VMX_CAP_ENTRY 0x3ULL
#define HV_VMX_CAP_EXIT 0x4ULL
#define HV_VMX_CAP_BASIC 0x5ULL
#define HV_VMX_CAP_TRUE_PINBASED 0x6ULL
#define HV_VMX_CAP_TRUE_PROCBASED 0x7ULL
#define HV_VMX_CAP_TRUE_ENTRY 0x8ULL
#define HV_VMX_CAP_TRUE_EXIT 0x9ULL
#define HV_VMX_CAP_MISC 0xaULL
#define HV_VMX_CAP_CR0_FIXED0 0xbULL
#define HV_VMX_CAP_CR0_FIXED1 0xcULL
#define HV_VMX_CAP_CR4_FIXED0 0xdULL
#define HV_VMX_CAP_CR4_FIXED1 0xeULL
#define VMCS_GUEST_ES 0x800ULL
#define VMCS_GUEST_CS 0x802ULL
#define VMCS_GUEST_SS 0x804ULL
#define VMCS_GUEST_DS 0x806ULL
#define VMCS_GUEST_FS 0x808ULL
#define VMCS_GUEST_GS 0x80aULL
#define VMCS_GUEST_LDTR 0x80cULL
#define VMCS_GUEST_TR 0x80eULL
#define VMCS_GUEST_PHYSICAL_ADDRESS 0x2400ULL
#define VMCS_GUEST_IA32_EFER 0x2806ULL
#define VMCS_CTRL_PIN_BASED 0x4000ULL
#define VMCS_CTRL_CPU_BASED 0x4002ULL
#define VMCS_CTRL_VMEXIT_CONTROLS 0x400cULL
#define VMCS_CTRL_VMENTRY_CONTROLS 0x4012ULL
#define VMCS_CTRL_VMENTRY_IRQ_INFO 0x4016ULL
#define VMCS_CTRL_VMENTRY_EXC_ERROR 0x4018ULL
#define VMCS_CTRL_VMENTRY_INSTR_LEN 0x401aULL
#define VMCS_CTRL_CPU_BASED2 0x401eULL
#define VMCS_RO_INSTR_ERROR 0x4400ULL
#define VMCS_RO_EXIT_REASON 0x4402ULL
#define VMCS_RO_VMEXIT_INSTR_LEN 0x440cULL
#define VMCS_GUEST_ES_LIMIT 0x4800ULL
#define VMCS_GUEST_CS_LIMIT 0x4802ULL
#define VMCS_GUEST_SS_LIMIT 0x4804ULL
#define VMCS_GUEST_DS_LIMIT 0x4806ULL
#define VMCS_GUEST_FS_LIMIT 0x4808ULL
#define VMCS_GUEST_GS_LIMIT 0x480aULL
#define VMCS_GUEST_LDTR_LIMIT 0x480cULL
#define VMCS_GUEST_TR_LIMIT 0x480eULL
#define VMCS_GUEST_GDTR_LIMIT 0x4810ULL
#define VMCS_GUEST_IDTR_LIMIT 0x4812ULL
#define VMCS_GUEST_ES_AR 0x4814ULL
#define VMCS_GUEST_CS_AR 0x4816ULL
#define VMCS_GUEST_SS_AR 0x4818ULL
#define VMCS_GUEST_DS_AR 0x481aULL
#define VMCS_GUEST_FS_AR 0x481cULL
#define VMCS_GUEST_GS_AR 0x481eULL
#define VMCS_GUEST_LDTR_AR 0x4820ULL
#define VMCS_GUEST_TR_AR 0x4822ULL
#define VMCS_GUEST_INTERRUPTIBILITY 0x4824ULL
#define VMCS_GUEST_ACTIVITY_STATE 0x4826ULL
#define VMCS_CTRL_CR0_MASK 0x6000ULL
#define VMCS_CTRL_CR4_MASK 0x6002ULL
#define VMCS_CTRL_CR0_SHADOW 0x6004ULL
#define VMCS_CTRL_CR4_SHADOW 0x6006ULL
#define VMCS_RO_EXIT_QUALIFIC 0x6400ULL
#define VMCS_GUEST_CR0 0x6800ULL
#define VMCS_GUEST_CR3 0x6802ULL
#define VMCS_GUEST_CR4 0x6804ULL
#define VMCS_GUEST_ES_BASE 0x6806ULL
#define VMCS_GUEST_CS_BASE 0x6808ULL
#define VMCS_GUEST_SS_BASE 0x680aULL
#define VMCS_GUEST_DS_BASE 0x680cULL
#define VMCS_GUEST_FS_BASE 0x680eULL
#define VMCS_GUEST_GS_BASE 0x6810ULL
#define VMCS_GUEST_LDTR_BASE 0x6812ULL
#define VMCS_GUEST_TR_BASE 0x6814ULL
#define VMCS_GUEST_GDTR_BASE 0x6816ULL
#define VMCS_GUEST_IDTR_BASE 0x6818ULL
#define VMX_REASON_EXC_NMI 0x0ULL
#define VMX_REASON_IRQ 0x1ULL
#define VMX_REASON_TRIPLE_FAULT 0x2ULL
#define VMX_REASON_IO_SMI 0x5ULL
#define VMX_REASON_OTHER_SMI 0x6ULL
#define VMX_REASON_HLT 0xcULL
#define VMX_REASON_IO 0x1eULL
#define VMX_REASON_RDMSR 0x1fULL
#define VMX_REASON_WRMSR 0x20ULL
#define VMX_REASON_VMENTRY_GUEST 0x21ULL
#define VMX_REASON_APIC_ACCESS 0x2cULL
#define VMX_REASON_EPT_VIOLATION 0x30ULL
#define VMX_REASON_VMX_TIMER_EXPIRED 0x34ULL

/* hv.h, macOS 10.10 */
extern hv_return_t hv_vm_create(hv_vm_options_t flags);
/* hv.h, macOS 10.10 */
extern hv_return_t hv_vm_destroy(void);
/* hv.h, macOS 10.10 */
extern hv_return_t hv_vm_map(hv_uvaddr_t uva, hv_gpaddr_t gpa, size_t size, hv_memory_flags_t flags);
/* hv.h, macOS 10.10 */
extern hv_return_t hv_vm_unmap(hv_gpaddr_t gpa, size_t size);
/* hv.h, macOS 10.10 */
extern hv_return_t hv_vm_protect(hv_gpaddr_t gpa, size_t size, hv_memory_flags_t flags);
/* hv.h, macOS 10.10 */
extern hv_return_t hv_vcpu_create(hv_vcpuid_t * vcpu, hv_vcpu_options_t flags);
/* hv.h, macOS 10.10 */
extern hv_return_t hv_vcpu_destroy(hv_vcpuid_t vcpu);
/* hv.h, macOS 10.10 */
extern hv_return_t hv_vcpu_read_register(hv_vcpuid_t vcpu, hv_x86_reg_t reg, uint64_t * value);
/* hv.h, macOS 10.10 */
extern hv_return_t hv_vcpu_write_register(hv_vcpuid_t vcpu, hv_x86_reg_t reg, uint64_t value);
/* hv.h, macOS 10.10 */
extern hv_return_t hv_vcpu_read_msr(hv_vcpuid_t vcpu, uint32_t msr, uint64_t * value);
/* hv.h, macOS 10.10 */
extern hv_return_t hv_vcpu_write_msr(hv_vcpuid_t vcpu, uint32_t msr, uint64_t value);
/* hv.h, macOS 10.10 */
extern hv_return_t hv_vcpu_enable_native_msr(hv_vcpuid_t vcpu, uint32_t msr, bool enable);
/* hv.h, macOS 10.10 */
extern hv_return_t hv_vcpu_run(hv_vcpuid_t vcpu);
/* hv.h, macOS 10.15 */
extern hv_return_t hv_vcpu_run_until(hv_vcpuid_t vcpu, uint64_t deadline);
/* hv.h, macOS 10.10 */
extern hv_return_t hv_vcpu_interrupt(hv_vcpuid_t * vcpus, unsigned int vcpu_count);
/* hv_vmx.h, macOS 10.10 */
extern hv_return_t hv_vmx_vcpu_read_vmcs(hv_vcpuid_t vcpu, uint32_t field, uint64_t * value);
/* hv_vmx.h, macOS 10.10 */
extern hv_return_t hv_vmx_vcpu_write_vmcs(hv_vcpuid_t vcpu, uint32_t field, uint64_t value);
/* hv_vmx.h, macOS 10.10 */
extern hv_return_t hv_vmx_read_capability(uint32_t field, uint64_t * value);
/* hv_vmx.h, macOS 10.10 */
extern hv_return_t hv_vmx_vcpu_set_apic_address(hv_vcpuid_t vcpu, hv_gpaddr_t gpa);
/* hv.h, macOS 12.0 */
extern hv_return_t hv_vcpu_exit_info(hv_vcpuid_t vcpu, hv_vm_exitinfo_t * code);
/* hv.h, macOS 12.0 */
extern hv_return_t hv_vcpu_exit_ioapic_eoi(hv_vcpuid_t vcpu, uint8_t * vec);
/* hv.h, macOS 12.0 */
extern hv_return_t hv_vcpu_exit_init_ap(hv_vcpuid_t vcpu, bool * is_actv, unsigned count);
/* hv.h, macOS 12.0 */
extern hv_return_t hv_vcpu_exit_startup_ap(hv_vcpuid_t vcpu, bool * is_actv, unsigned count, uint64_t * ap_rip);
/* hv.h, macOS 12.0 */
extern hv_return_t hv_vcpu_exit_inject_excp(hv_vcpuid_t vcpu, uint8_t * vec, bool * valid, uint32_t * code, bool * restart);
/* hv.h, macOS 12.0 */
extern hv_return_t hv_vcpu_exit_apic_access_read(hv_vcpuid_t vcpu, uint32_t * value);
/* hv.h, macOS 12.0 */
extern hv_return_t hv_vcpu_apic_read(hv_vcpuid_t vcpu, uint32_t offset, uint32_t * data);
/* hv.h, macOS 12.0 */
extern hv_return_t hv_vcpu_apic_write(hv_vcpuid_t vcpu, uint32_t offset, uint32_t data, bool * no_side_effect);
/* hv.h, macOS 12.0 */
extern hv_return_t hv_vcpu_apic_get_state(hv_vcpuid_t vcpu, hv_apic_state_ext_t * state);
/* hv.h, macOS 12.0 */
extern hv_return_t hv_vcpu_apic_put_state(hv_vcpuid_t vcpu, const hv_apic_state_ext_t * state);
/* hv.h, macOS 12.0 */
extern hv_return_t hv_vcpu_apic_ctrl(hv_vcpuid_t vcpu, hv_apic_ctrl_t ctrls);
/* hv.h, macOS 12.0 */
extern hv_return_t hv_vm_lapic_msi(uint64_t addr, uint64_t data);
/* hv.h, macOS 12.0 */
extern hv_return_t hv_vm_lapic_set_intr(hv_vcpuid_t vcpu, uint8_t vector, hv_apic_intr_trigger_t trig);
/* hv.h, macOS 12.0 */
extern hv_return_t hv_vm_send_ioapic_intr(uint64_t data);
/* hv.h, macOS 12.0 */
extern hv_return_t hv_vm_ioapic_read(hv_gpaddr_t gpa, uint32_t * datap);
/* hv.h, macOS 12.0 */
extern hv_return_t hv_vm_ioapic_write(hv_gpaddr_t gpa, uint32_t data);
/* hv.h, macOS 12.0 */
extern hv_return_t hv_vm_ioapic_assert_irq(int intin);
/* hv.h, macOS 12.0 */
extern hv_return_t hv_vm_ioapic_deassert_irq(int intin);
/* hv.h, macOS 12.0 */
extern hv_return_t hv_vm_ioapic_pulse_irq(int intin);
/* hv.h, macOS 12.0 */
extern hv_return_t hv_vm_ioapic_get_state(hv_ioapic_state_ext_t * state);
/* hv.h, macOS 12.0 */
extern hv_return_t hv_vm_ioapic_put_state(const hv_ioapic_state_ext_t * state);
/* hv.h, macOS 12.0 */
extern hv_return_t hv_vm_atpic_assert_irq(int irq);
/* hv.h, macOS 12.0 */
extern hv_return_t hv_vm_atpic_deassert_irq(int irq);
/* hv.h, macOS 12.0 */
extern hv_return_t hv_vm_atpic_port_read(int port, uint8_t * valuep);
/* hv.h, macOS 12.0 */
extern hv_return_t hv_vm_atpic_port_write(int port, uint8_t value);

#endif
