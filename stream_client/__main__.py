import sys

from stream_client.cli import main

sys.exit(main())
