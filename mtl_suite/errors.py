"""Errors a user can cause. The CLI prints them as one line and exits with code 2; anything else is a bug
and keeps its traceback."""


class UserError(Exception):
    """Bad input from the user: a path, an image, a value. The message names the thing and what was expected."""


class BadImageError(UserError):
    """An image file that cannot be used (unreadable, truncated, not an image, too large)."""

    def __init__(self, path: object, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
