"""Target kinds: one module per kind of thing a credential is pushed to, behind one seam.

Like cert-manager's issuers (``pkg/issuer/<kind>/`` behind a small ``Issuer`` interface), the
healer never knows which kind it drives. It decides, takes the lease, claims the account's
presentation, renews both in ``before_attempt`` and records the verdict; a :class:`TargetKind`
only knows how to

1. :meth:`~TargetKind.discover` what it needs before the lease (slow reads: gateway keys,
   cluster members, the connection itself);
2. :meth:`~TargetKind.send` the credential built from the resolved secret, calling
   ``before_attempt`` before every attempt of the request that presents it;
3. :meth:`~TargetKind.verdict` of an error answer to that request (accepted, rejected, not
   presented, in doubt): the kind only says which service answered (:func:`answer_of`); the
   meaning is the safety core's (:func:`remediation.safety.answers.verdict_of`).

Kinds: :mod:`remediation.reconciler.targets.gateway` (Power BI gateway data sources; its parts:
:mod:`~remediation.reconciler.targets.gateway_keys`, :mod:`~remediation.reconciler.targets.gateway_settings`
and :mod:`~remediation.reconciler.targets.gateway_take_over`) and
:mod:`remediation.reconciler.targets.fabric` (Fabric connections).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from remediation.clients.api_errors import ApiConnectionError, ApiError
from remediation.clients.keyvault import SecretValue
from remediation.errors import RemediationError
from remediation.reconciler.runs import Resolved, Run
from remediation.rules.credentials import ResolvedCredential
from remediation.rules.redact import mask_urls
from remediation.safety.answers import Answer, Service, VerdictOf

__all__ = ["Presented", "TargetKind", "TargetRefused", "answer_of", "in_few_words"]


def answer_of(service: Service, exc: ApiError) -> Answer:
    """The :class:`~remediation.safety.answers.Answer` an API error stands for: its status, its
    code and every detail (an inner code counts as a detail), or no answer at all."""
    if isinstance(exc, ApiConnectionError):
        return Answer(service, None, exc.code, exc.message, sent=exc.sent)
    details = tuple(exc.details)
    if exc.inner_code and exc.inner_code != exc.code:
        details = ((exc.inner_code, ""), *details)
    return Answer(service, exc.status, exc.code, exc.message, details)


def in_few_words(exc: Exception) -> str:
    """A failed read in a few words (status and code: no body, no header), for a reason."""
    if isinstance(exc, ApiError):
        return f"HTTP {exc.status}" + (f" {exc.code}" if exc.code else "")
    return mask_urls(str(exc))


class TargetRefused(RemediationError):
    """Raised by :meth:`TargetKind.discover` when the target, as read, must not be sent the
    binding's credential (nothing is presented); the message says why and what to do."""


class Presented(Exception):  # noqa: N818 - not an error: an answer with its verdict
    """Raised by :meth:`TargetKind.send` when the verdict is known without an API error to read
    (a password grant refused, a request that could not be sent, a credential left alone)."""

    def __init__(self, verdict: VerdictOf) -> None:
        super().__init__(verdict.reason)
        self.verdict = verdict


class TargetKind(Protocol):
    """What is particular to one kind of target; everything else is the healer's."""

    service: str
    """The service that serves the presenting request, for sentences ("Power BI", "Fabric")."""

    def describe(self, item: Resolved) -> str:
        """How a person names the target in a sentence ("gateway <id>", "connection <id>")."""
        ...

    def discover(self, item: Resolved, run: Run) -> object:
        """What :meth:`send` needs, read before the lease (it may be slow).

        Raises :class:`~remediation.errors.RemediationError` when it cannot be read
        (:class:`~remediation.clients.api_errors.ThrottledPastDeadline` when the service asked to
        wait too long).
        """
        ...

    def send(
        self,
        item: Resolved,
        secret: SecretValue,
        resolved: ResolvedCredential,
        found: object,
        run: Run,
        before_attempt: Callable[[], None],
    ) -> None:
        """Build the credential and present it; return when the target accepted it.

        Raises :class:`Presented` with a verdict, :class:`~remediation.clients.api_errors.ApiError` (read with
        :meth:`verdict`), or whatever ``before_attempt`` raises (the request was not sent).
        """
        ...

    def verdict(self, exc: ApiError) -> VerdictOf:
        """The verdict of the presenting request that raised ``exc``."""
        ...
