"""The one error type users see.

Every problem caused by the user's input (a missing file, a config that contradicts its
weights, an unsupported architecture, NaNs in the outputs ...) is raised as a UniAttnError.
The CLI prints it as one line and exits with code 2; library callers can catch it.
"""


class UniAttnError(Exception):
    """A problem with the user's input, stated as one line: what is wrong, then how to fix it."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem.rstrip(".")
        self.fix = (fix[0].upper() + fix[1:]).rstrip(".") if fix else None
        super().__init__(f"{self.problem}. {self.fix}." if self.fix else f"{self.problem}.")
