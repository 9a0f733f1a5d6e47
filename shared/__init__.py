"""Common vocabulary of the ctrain services: settings, events, topics, clients.

Nothing in this package holds service logic, and nothing connects at import.
"""
