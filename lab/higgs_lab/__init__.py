"""The container lab of higgs.vpn: ``lab`` (images, networks, systemd containers; molecule's create and
destroy), ``fleet`` (the lab fleet of scripts/lab) and ``httpd`` (the lab's HTTP server, run inside it).

    python -m higgs_lab.lab images|create|destroy ...
    python -m higgs_lab.fleet up|down
"""
