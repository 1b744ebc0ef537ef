from iscsifs.localtarget import Tgtd, missing_requirements, free_tcp_port  # noqa: F401
