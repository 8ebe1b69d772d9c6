"""higgs_nat: NAT detection and WireGuard port mapping of a Higgs.net node."""
