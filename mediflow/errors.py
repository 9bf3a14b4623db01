"""The one exception family users see.

Every error caused by user input (a broken taxonomy file, an unknown task, a malformed config, a
teacher that stays down) is raised as a :class:`MediflowError` whose message names the problem in
one line; the CLI prints that line without a traceback and exits with status 2.
"""


class MediflowError(Exception):
    """A user-facing error with a one-line, self-explanatory message."""


class TaxonomyError(MediflowError):
    """A taxonomy folder is invalid: the message names the file, the entry and the problem."""


class ConfigError(MediflowError):
    """A run or stage config is invalid: the message names the key and the problem."""


class TeacherError(MediflowError):
    """The teacher could not be reached or kept failing after its retries."""


class TeacherUnavailable(TeacherError):
    """The teacher's start-up check failed (no server, refused key, model not served): nothing was paid for."""
