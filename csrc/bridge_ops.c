/* Bridge for the ops area: parse, validate, release the GIL, call the core. */
#include "bridge.h"

PyMethodDef rp_methods_ops[] = {
    {NULL, NULL, 0, NULL},
};
