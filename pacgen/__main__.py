import sys

from pacgen.app.cli import main

sys.exit(main())
