"""Kubernetes device plugin (kubelet API v1beta1) for the NPUs an EdgeFed driver can see.

- ``api.proto``: the kubelet's v1beta1 wire schema; ``gen.py`` generates the Python stubs from it
  at build time (``python -m drivers.deviceplugin.gen``).
- ``core.py``: pure decisions (resource names, grouping by device model, allocation).
- ``service.py``: the ``DevicePlugin`` gRPC service of one resource.
- ``plugin.py``: the daemon that polls the driver and keeps each resource registered.
- ``cli.py``: ``python -m drivers.deviceplugin --driver-config FILE``.
"""
