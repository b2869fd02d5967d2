"""Hardware I/O for the station: scales, cameras, plate readers.

No legal rules and no storage here. Each device kind has one base class in
``drivers/<kind>/base.py`` whose public methods do timeouts and bookkeeping once, a registry
that picks a backend by the config's ``type`` and imports it lazily (a missing vendor library
fails only when that backend is chosen), and a simulated twin for every backend.
"""
