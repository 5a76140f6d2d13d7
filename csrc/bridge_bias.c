/* Bridge for the bias area: parse, validate, release the GIL, call the core. */
#include "bridge.h"

PyMethodDef rp_methods_bias[] = {
    {NULL, NULL, 0, NULL},
};
