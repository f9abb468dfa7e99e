"""python -m provisioning: the same as provisioning-daemon."""
import sys

from provisioning.cli import main

sys.exit(main())
