"""The one base class for problems a user can fix: the CLI and the app show its message, not a trace."""


class PACGenError(ValueError):
    """Bad input or an unusable file or model; the message names the thing and what is wrong."""
