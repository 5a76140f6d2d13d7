/* Bridge for the gemm area: parse, validate, release the GIL, call the core. */
#include "bridge.h"

PyMethodDef rp_methods_gemm[] = {
    {NULL, NULL, 0, NULL},
};
