"""Helpers for tests/test_multiprocess.py: an app that gunicorn serves with several workers."""
