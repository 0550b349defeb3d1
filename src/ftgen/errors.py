"""The one exception type that means "the user gave us something wrong"."""


class UserError(Exception):
    """A problem with the user's input (config, data, arguments). The CLI prints it as one line, exit 2."""
