"""Account and token failures, each with a stable snake_case ``code``.

The HTTP layer maps the three families to statuses (invalid input 400, conflict
409, failed authentication 401); the CLI prints the message.
"""

from __future__ import annotations

from dfms.errors import DfmsError


class AuthError(DfmsError):
    code = "auth_error"

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class InvalidInput(AuthError):
    """A field of a registration (or the CLI) is not acceptable."""

    code = "validation_error"


class InvalidEmail(InvalidInput):
    code = "invalid_email"


class WeakPassword(InvalidInput):
    code = "weak_password"


class EmailTaken(AuthError):
    code = "email_taken"


class AuthenticationFailed(AuthError):
    """Credentials or a refresh token that do not let the caller in."""

    code = "unauthorized"


class InvalidCredentials(AuthenticationFailed):
    code = "invalid_credentials"

    def __init__(self, message: str = "email or password is incorrect") -> None:
        super().__init__(message)


class AccountDisabled(AuthenticationFailed):
    code = "account_disabled"

    def __init__(self, message: str = "this account is disabled") -> None:
        super().__init__(message)


class InvalidRefreshToken(AuthenticationFailed):
    code = "invalid_refresh_token"

    def __init__(self, message: str = "refresh token is invalid, expired or revoked") -> None:
        super().__init__(message)


class RefreshTokenReused(AuthenticationFailed):
    code = "refresh_token_reused"

    def __init__(self, message: str = "refresh token was already used; every token of its "
                 "session has been revoked, sign in again") -> None:
        super().__init__(message)
