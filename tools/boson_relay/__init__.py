"""A small relay speaking the BosonServer protocol, version 2 (docs/relay-protocol.md).

``server``: the relay (REST control plane and WebSocket relay on one port).
``client``: the client-side connector (a local UDP port for wg-quick's
Endpoint, carried to the relay over one WebSocket).

Both share the wire format and the WebSocket driver with the node connector
(``higgs_relay`` in roles/relay_connector/files), so there is one
implementation of the protocol in the collection.  When ``higgs_relay`` is not
installed next to this package, the copy in the collection is used.
"""

import os
import sys

try:
    import higgs_relay  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                    "..", "..", "roles", "relay_connector", "files"))
