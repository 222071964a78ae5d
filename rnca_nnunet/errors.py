"""The one exception type the console scripts turn into a one-line message, and the warning a refiner gives
when its do-no-harm decisions were made on another model's cases."""


class InputError(ValueError):
    """Bad user input (from the command line, a file, or a Python caller): the message is one line that names
    the file, flag or argument and the fix."""


class ReadOutElsewhereWarning(UserWarning):
    """A refiner copied into another model folder of its dataset: its read-out (guards, per-class decision) was
    chosen on another nnU-Net model's CV predictions, so it may keep what does not help this one."""
