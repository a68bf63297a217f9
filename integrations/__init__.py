"""Thin adapters from the framework-agnostic core to training frameworks.

Import the one you use: ``synthaug.integrations.mmseg`` or
``synthaug.integrations.detectron2``. This package itself imports nothing heavy.
"""
