#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
/* On a Mac, the SDK's header. Elsewhere, irqdiff's generated one with the
 * same names (-I hypervisor-framework-double/include), implemented by the
 * test double's library (-lhypervisor_framework_double). */
#include <Hypervisor/Hypervisor.h>
#define OBSERVED_BY "observed (Hypervisor.framework)"
