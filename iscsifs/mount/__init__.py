"""``mount.iscsifs``: mount the targets behind one or more iSCSI portals as a FUSE filesystem.

    options.py    the command line and the -o vocabulary -> MountOptions; mount point checks
    config.py     what the config dir gives one mount: initiator name, iscsid.conf, records
    lifetime.py   one mount from portal check to unmount (nursery, Initiator, pyfuse3)
    main.py       main(): foreground, or a daemon that reports through a pipe when mounted
"""
