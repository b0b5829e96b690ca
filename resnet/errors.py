"""The one base of every error a person's input can cause (a setting, a file, a run folder, a limit): its message
says what is wrong in one sentence, and every front end (the studio, the command line) shows that sentence
instead of a stack trace. Each module's own error derives from it; this module imports nothing."""


class UserError(Exception):
    """Something a person gave is wrong; the message says what, in one sentence."""
