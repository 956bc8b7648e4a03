#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __APPLE__
#include <Hypervisor/Hypervisor.h>
#include <mach/mach_time.h>
#else
/* Syntax-checking on another OS: irqdiff's declarations of the same API
 * (hypervisor-framework-sys/include/hv_decls.h). */
#include "hv_decls.h"
extern uint64_t mach_absolute_time(void);
extern void *valloc(size_t size);
#endif

