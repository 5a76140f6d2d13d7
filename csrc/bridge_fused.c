/* Bridge for the fused area: parse, validate, release the GIL, call the core. */
#include "bridge.h"

PyMethodDef rp_methods_fused[] = {
    {NULL, NULL, 0, NULL},
};
