"""The ``ctrain`` command line: dev stack, replay, and (later) demo and operations."""
