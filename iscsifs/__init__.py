"""iscsifs: a userspace iSCSI initiator that mounts iSCSI storage as a FUSE filesystem."""

__version__ = "0.1.0"
