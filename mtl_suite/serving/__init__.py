"""Serving: the registered pyfunc that takes raw images."""
