"""A deterministic simulator of iscsifs's command path (FoundationDB / TigerBeetle style).

The real code - ``device.Lun``, ``multipath``, ``net.session.Session``,
``core.connection.Connection``, the PDU codec and ``initiator.Initiator`` - runs on trio's
``MockClock`` over an in-memory network (:mod:`.net`) against a simulated target
(:mod:`.target`, disks in :mod:`.disk`). One seed decides the configuration, the workload
(:mod:`.workload`) and the faults (:mod:`.faults`); invariants (:mod:`.checker`,
:mod:`.model`) are checked after every step; a failing seed replays exactly and can be shrunk
(:mod:`.run`). Run it with ``bash scripts/sim`` (see ``docs/failure.md``).

Nothing in ``iscsifs`` imports this package.
"""

from .run import Result, format_report, replay_command, run_seed, shrink

__all__ = ["Result", "format_report", "replay_command", "run_seed", "shrink"]
