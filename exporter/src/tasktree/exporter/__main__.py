import sys

from tasktree.exporter.cli import main

sys.exit(main())
