"""Test doubles of outside services, served on 127.0.0.1 for the real clients to call.

Only tests import these; nothing under ``src`` may.
"""
