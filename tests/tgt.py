"""The private-tgtd harness lives in the package (``iscsifs.localtarget``) so that the demo can
use it too; tests import it by this short name."""

from iscsifs.localtarget import *  # noqa: F401,F403
