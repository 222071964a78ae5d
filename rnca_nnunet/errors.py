"""The one exception type the console scripts turn into a one-line message."""


class InputError(ValueError):
    """Bad user input (from the command line, a file, or a Python caller): the message is one line that names
    the file, flag or argument and the fix."""
