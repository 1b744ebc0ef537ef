"""The private-tgtd harness lives in the package (``iscsifs.localtarget``) so that the demo can
use it too; tests import it by this short name."""

from iscsifs.localtarget import *  # noqa: F401,F403
from iscsifs.localtarget import (HOST, IQN1, IQN2, INITIATOR_IQN, MiB, Connection, LunInfo,  # noqa: F401
                                 TargetInfo, Tgtd, TgtadmError, TgtError, free_tcp_port,
                                 missing_requirements)
