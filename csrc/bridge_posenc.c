/* Bridge for the posenc area: parse, validate, release the GIL, call the core. */
#include "bridge.h"

PyMethodDef rp_methods_posenc[] = {
    {NULL, NULL, 0, NULL},
};
