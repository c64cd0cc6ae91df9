"""The one exception type for mistakes a user can make (bad config, bad file, bad request).

The command line prints its message on one line and exits with code 2; the server answers
with a 4xx. Anything else that escapes is our bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""
