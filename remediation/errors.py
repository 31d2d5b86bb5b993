"""The product's typed errors.

Every error the core raises derives from :class:`RemediationError`; modules add their own
subclasses next to the code that raises them (a client's HTTP errors live with the client).
Errors are turned into exit codes and HTTP statuses only at the edges (CLI, ``function_app``):
a :class:`ConfigError` means "the environment or the bindings file is wrong" (exit 2; HTTP 500
``ConfigurationError``: the deployment, not the request, is wrong), and its message is one line
that names what is wrong and how to fix it.

No message built here, or anywhere in the product, carries a secret value.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BindingsError", "ConfigError", "LedgerError", "RemediationError"]


class RemediationError(Exception):
    """Base class of every error the product raises on purpose."""


class LedgerError(RemediationError):
    """The ledger could not be read or written (storage error, closed ledger, corrupt record)."""


class ConfigError(RemediationError):
    """The environment or the bindings are unusable. The message names what and how to fix it."""


class BindingsError(ConfigError):
    """The bindings file (or one binding in it) breaks a rule of the contract.

    ``binding`` is the binding's name, or its position (``bindings[2]``) when it has no usable
    name; ``field`` is the path of the offending key inside it (``targets[0].gatewayId``). Both
    are ``None`` for problems with the file as a whole (missing, not JSON, ...). ``problem`` is
    the bare explanation; ``str(error)`` puts the three together on one line.
    """

    def __init__(self, problem: str, *, binding: str | None = None, field: str | None = None) -> None:
        self.problem = problem
        self.binding = binding
        self.field = field
        super().__init__(self._format(problem, binding, field))

    @staticmethod
    def _format(problem: str, binding: str | None, field: str | None) -> str:
        where = []
        if binding is not None:
            where.append(f"binding {binding!r}")
        if field is not None:
            where.append(f"field {field!r}")
        prefix = "bindings: " + (", ".join(where) + ": " if where else "")
        return prefix + problem

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle as ``cls(*args)``; keep the keyword-only attributes across processes.
        return (_rebuild_bindings_error, (type(self), self.problem, self.binding, self.field))


def _rebuild_bindings_error(
    cls: type[BindingsError], problem: str, binding: str | None, field: str | None
) -> BindingsError:
    return cls(problem, binding=binding, field=field)


class NotBound(RemediationError):
    """The secret, data source or dataset named by a command is not in the bindings."""


class SecretVersionNotFound(NotBound):
    """An explicit version named by a command does not exist in Key Vault, or is disabled.

    Nothing is sent: the operator asked for that version, and applying another one instead
    would do something they did not ask for. (HTTP 404 ``SecretVersionNotFound``, exit 2.)"""
