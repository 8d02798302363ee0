"""Test doubles shared by the export and runtime tests (``from fakes.tensorrt import ...``).

``tests/`` is on ``sys.path`` because ``tests/conftest.py`` lives there (pytest's default
``prepend`` import mode), so both ``tests/export`` and ``tests/runtime`` import this package.
"""
