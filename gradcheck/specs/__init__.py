"""Per-family gradcheck spec modules.

Each module here defines ``SPECS = {"Type": strategy, ...}`` using the helpers
of :mod:`gradcheck.strategies` (Case, small_dims, bottoms, ...);
``strategies.SPECS`` merges them all, so adding a layer family means adding a
module here and never editing a shared table.
"""
