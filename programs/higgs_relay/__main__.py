"""``python3 -m higgs_relay``: run the node connector."""

from higgs_relay.connector import main

raise SystemExit(main())
