"""KubeEdge's Device Management Interface (DMI) v1beta1: the proto and its stubs.

EdgeCore (KubeEdge 1.15+) hands each Device's spec, desired values included, to the
mapper of the Device's protocol over this gRPC API; edged's mapper
(``edged/twin/dmi.py``) and the fake EdgeCore of the tests (``edgefed/testing/dmi.py``)
both speak it. ``stubs.load()`` imports the generated modules.
"""
