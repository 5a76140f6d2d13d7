"""Notebook helpers, re-exported from relpos.encodings.

- ``alibi_slopes(n_heads)``, ``t5_bucket(rel, ...)``, ``relative_positions(Tq, Tk, q_offset)``
  (bias area, relpos/encodings/bias.py)
- ``rope_inv_freq(...)``, ``rope_angles(...)``, ``yarn_ramp``, ``xpos_scale``, ``apply_rotary``
  (rotary area, relpos/encodings/rotary.py)
- ``sinusoidal_table(...)`` (relpos/encodings/absolute.py)
"""
from .absolute import sinusoidal_table
from .bias import alibi_slopes, relative_positions, t5_bucket
from .rotary import apply_rotary, rope_angles, rope_inv_freq, xpos_scale, yarn_ramp

__all__ = ["alibi_slopes", "t5_bucket", "relative_positions", "rope_inv_freq", "rope_angles",
           "yarn_ramp", "xpos_scale", "apply_rotary", "sinusoidal_table"]
