"""Backends execute a compiled program. Only ``tenseal.py`` imports tenseal."""
BACKENDS = ("reference", "sim", "tenseal")
