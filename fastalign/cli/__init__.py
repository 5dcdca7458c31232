"""The ``fastalign`` command line (see ``main.py``)."""
