import sys

from dfms.cli import main

sys.exit(main())
