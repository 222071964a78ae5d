"""The one exception type the console scripts turn into a one-line message."""


class InputError(Exception):
    """Bad user input: the message is one line that names the file and the fix."""
