"""Goophry on Twisted's test suite (a package, so tests import C{tests.helpers})."""
