"""The one marker every user-facing mobilec error carries.

An error a user can fix (a bad file, name, shape, address, flag) is raised as a class that derives
from ``UserError`` and from the matching built-in (``ValueError``, ``RuntimeError``, ...), so
callers may catch either. The command line prints these as one line naming the fix; anything
else escaping is a bug in mobilec and is reported as an internal error.
"""


class UserError(Exception):
    """Base of every error that means "the input or the environment needs fixing", not a bug."""


class ConfigError(UserError, ValueError):
    """A bad value in a configuration or on the command line."""
