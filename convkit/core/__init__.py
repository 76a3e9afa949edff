"""The flow, in order: sources, inputs, export, verify, runtime, compare, artifacts (+ manifest).

Never imports a framework or a front end's own module (``tests/unit/test_layers.py`` keeps it so).
"""
