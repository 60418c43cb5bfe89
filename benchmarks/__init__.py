"""Side-by-side timing and memory scripts (not tests): ``python -m benchmarks.bench_<name>``.

Every side, ours and stock, runs with torch's transparent-huge-page advice for large CPU
tensors. sam-deblur turns it on when it is imported before torch (see
``sam_deblur_cli._advise_huge_pages``); set here, before any script imports torch, it
applies to the stock code too, so that the comparisons are like for like instead of
depending on which module a child happened to import first. ``THP_MEM_ALLOC_ENABLE=0`` in
the environment turns it off for both sides.
"""

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
