"""relpos.nn: Module, Parameter and layers (filled in by the optim/nn area)."""
