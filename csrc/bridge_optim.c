/* Bridge for the optim area: parse, validate, release the GIL, call the core. */
#include "bridge.h"

PyMethodDef rp_methods_optim[] = {
    {NULL, NULL, 0, NULL},
};
