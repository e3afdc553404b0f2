"""What the email tasks accept and return.

Every task takes one of these models, so an invalid address fails when the caller builds
the model: before anything is queued, in the API and in code alike.
"""

from typing import Annotated

from pydantic import BaseModel, ConfigDict, EmailStr, Field, HttpUrl

Name = Annotated[str, Field(max_length=200)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class EmailContent(_Strict):
    """A ready-to-send message: one email to every address in `to`."""

    to: list[EmailStr] = Field(min_length=1, max_length=50)
    subject: str = Field(min_length=1, max_length=250)
    text: str = Field(min_length=1, max_length=100_000)
    html: str | None = Field(default=None, max_length=500_000)


class BulkEmail(_Strict):
    """Separate messages sent over one connection; each succeeds or fails on its own."""

    messages: list[EmailContent] = Field(min_length=1, max_length=1000)


class WelcomeEmail(_Strict):
    to: EmailStr
    name: Name


class PasswordResetEmail(_Strict):
    to: EmailStr
    name: Name
    reset_url: HttpUrl
    expires_in_minutes: int = Field(default=60, ge=1, le=30 * 24 * 60)


class VerificationEmail(_Strict):
    to: EmailStr
    name: Name
    verification_url: HttpUrl


class SystemNotification(_Strict):
    """A notice to every active user."""

    title: str = Field(min_length=1, max_length=200)
    message: str = Field(min_length=1, max_length=20_000)
    action_url: HttpUrl | None = None


class NotificationEmail(SystemNotification):
    """The same notice, to one person."""

    to: EmailStr
    name: Name = ""


class FailedRecipient(BaseModel):
    email: str
    error: str


class DeliveryReport(BaseModel):
    """Who the server accepted and who it refused, and why."""

    sent: list[str] = Field(default_factory=list)
    failed: list[FailedRecipient] = Field(default_factory=list)

    def merge(self, other: "DeliveryReport") -> None:
        self.sent.extend(other.sent)
        self.failed.extend(other.failed)


class FanOutReport(BaseModel):
    """What a system-wide notification queued: one email:send_bulk task per batch."""

    batches: int = 0
    queued: int = 0
    # Stored addresses that are not valid: skipped so the rest still get the notice.
    skipped: list[str] = Field(default_factory=list)


class EmailQueued(BaseModel):
    task_id: str
