"""The server's refusal of a request: an HTTP status and one line, sent in the {error} shape."""


class ApiError(Exception):
    def __init__(self, status, message, kind="invalid_request_error", headers=None):
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers
