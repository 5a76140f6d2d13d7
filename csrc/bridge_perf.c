/* Bridge for the perf area (fused training kernels): parse, validate, release the GIL, call the core. */
#include "bridge.h"

PyMethodDef rp_methods_perf[] = {
    {NULL, NULL, 0, NULL},
};
