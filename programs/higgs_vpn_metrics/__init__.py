"""Higgs.net VPN metrics for the node exporter's textfile collector: ``collector`` (one run writes one
Prometheus text file). Python standard library only."""
