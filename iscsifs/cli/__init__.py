"""The command lines: ``iscsifs`` (iscsiadm's jobs that need no mount) and ``mount.iscsifs``.

    common.py     what every command needs: config dir, initiator name, logging, and the one
                  map from an error to a one-line message and iscsiadm's exit code
    main.py       ``iscsifs``: the parser of every subcommand, and main()
    discover.py   ``iscsifs discover`` and ``iscsifs iname``
    nodes.py      ``iscsifs node``, ``iscsifs discovery``, ``iscsifs login``
    discard.py    ``iscsifs discard``: discard a range of a raw file through the mount
    mount.py      ``mount.iscsifs``: the mount(8) command line, then the mount in the
                  foreground or as a daemon that reports through a pipe when it is mounted
"""
