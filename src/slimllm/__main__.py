import sys

from slimllm.cli import main

sys.exit(main())
