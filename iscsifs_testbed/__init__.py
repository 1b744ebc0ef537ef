"""A throwaway iSCSI target for the demo, the tests and the benchmark: a private tgtd.

Not part of the product: nothing under ``iscsifs/`` imports this package (tests/t1_layers.py
checks it), and the wheel does not hold it (tests/t3_wheel.py checks that): the tests, the
benchmark and ``scripts/demo`` import it from the checkout. ``tgtd.py`` is the harness
(``Tgtd``, ``missing_requirements``), ``demo.py`` the demo (``bash scripts/demo``).
"""
