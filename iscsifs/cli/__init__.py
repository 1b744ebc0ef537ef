"""``iscsifs``: iscsiadm's jobs that need no mount, and the sessions of the running mounts.

    main.py       the parser of every subcommand, and main()
    discover.py   ``iscsifs discover`` and ``iscsifs iname``
    nodes.py      ``iscsifs node``, ``iscsifs discovery``, ``iscsifs login``
    discard.py    ``iscsifs discard``: discard a range of a raw file through the mount
    session.py    ``iscsifs session``: every mount's sessions, read from its files

``mount.iscsifs`` is the other entry point (``iscsifs.mount``), beside this one: the two share
``iscsifs.logs`` (logging), ``iscsifs.exits`` (an error -> one line and an exit code) and
``iscsifs.mounttable``, and import nothing of each other.
"""
