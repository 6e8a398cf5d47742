"""The errors a user can fix, kept apart from bugs: the CLI prints these as one line and exits 2.

``UserError`` is a wrong command, setting or file given by the user; ``DataError`` (a kind of it) is
a dataset that cannot be used as given. Both say what is wrong and what to do.
"""

from __future__ import annotations


class UserError(ValueError):
    """A setting, path or request the user gave cannot be used; the message says what to change."""


class DataError(UserError):
    """The dataset cannot be used as given; the message says what is wrong and what to do."""
