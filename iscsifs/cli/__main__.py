"""``python -m iscsifs.cli`` runs the ``iscsifs`` command."""

import sys

from iscsifs.cli.main import main

sys.exit(main())
