/* Bridge for the attn area: parse, validate, release the GIL, call the core. */
#include "bridge.h"

PyMethodDef rp_methods_attn[] = {
    {NULL, NULL, 0, NULL},
};
