"""The one exception type for bad user input (files, names, artifacts)."""


class UserError(ValueError):
    """Bad input from the user. The CLI prints it as one line naming the file/line/module and exits 2."""
