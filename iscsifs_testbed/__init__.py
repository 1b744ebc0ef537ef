"""A throwaway iSCSI target for the demo, the tests and the benchmark: a private tgtd.

Not part of the product: nothing under ``iscsifs/`` imports this package (tests/t1_layers.py
checks it). ``tgtd.py`` is the harness (``Tgtd``, ``missing_requirements``), ``demo.py`` the
``iscsifs-demo`` command.
"""
