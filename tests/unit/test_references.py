"""Key Vault references, pure parts (issue 20): where a reference is possible (one table, with
sources), the request that moves a connection onto one, the safety core's word on sending a copy,
the refresh gate for a referenced connection, the diagnosis of a reference Fabric cannot read,
and the bindings file's mark."""

from __future__ import annotations

import json

import pytest

from remediation.clients.fabric import Connection
from remediation.config.bindings import CredentialType
from remediation.config.bindings_file import parse_bindings, with_reference_mark
from remediation.errors import BindingsError
from remediation.reconciler.targets.fabric import UnsupportedConnection, reference_request
from remediation.rules.credentials import resolve_credential
from remediation.rules.diagnosis import Category, diagnose_refresh
from remediation.rules.references import (
    REFERENCE_RULES,
    ReferenceState,
    reference_field,
    reference_support,
)
from remediation.safety.actions import Action
from remediation.safety.presenting import reference_decision
from remediation.safety.refreshing import FailureEvidence, SourceEvidence, may_refresh

CONN = "6952a7b2-aea3-414f-9d85-6c0fe5d34539"
KV = "4399ab2c-7551-4c0e-8aa7-18fc2f217626"


@pytest.mark.parametrize(
    ("connectivity", "credential", "connector", "state", "says"),
    [
        ("ShareableCloud", "Basic", "SQL", ReferenceState.ELIGIBLE, "passwordReference"),
        ("ShareableCloud", "Key", "AzureBlobs", ReferenceState.ELIGIBLE, "keyReference"),
        (
            "VirtualNetworkGateway",
            "SharedAccessSignature",
            "AzureBlobs",
            ReferenceState.ELIGIBLE,
            "tokenReference",
        ),
        (
            "ShareableCloud",
            "ServicePrincipal",
            "SQL",
            ReferenceState.ELIGIBLE,
            "servicePrincipalSecretReference",
        ),
        ("ShareableCloud", "Basic", "Oracle", ReferenceState.ELIGIBLE, "do not list Oracle"),
        ("ShareableCloud", "SAS", None, ReferenceState.ELIGIBLE, "tokenReference"),  # Power BI's spelling
        ("OnPremisesGateway", "Basic", "SQL", ReferenceState.NOT_ELIGIBLE, "on-premises gateway"),
        ("OnPremisesGatewayPersonal", "Basic", "SQL", ReferenceState.NOT_ELIGIBLE, "personal gateway"),
        ("ShareableCloud", "Windows", "SQL", ReferenceState.NOT_ELIGIBLE, "Windows"),
        ("ShareableCloud", "KeyPair", "Snowflake", ReferenceState.NOT_ELIGIBLE, "KeyPair"),
        ("ShareableCloud", "OAuth2", "SharePointList", ReferenceState.NOT_ELIGIBLE, "OAuth2"),
        ("ShareableCloud", "OAuth2", "AzureKeyVault", ReferenceState.NOT_ELIGIBLE, "Key Vault connection"),
        ("ShareableCloud", None, "SQL", ReferenceState.NOT_ELIGIBLE, "unreported"),
    ],
)
def test_where_a_reference_is_possible_comes_from_one_table(
    connectivity: str, credential: str | None, connector: str | None, state: ReferenceState, says: str
) -> None:
    support = reference_support(connectivity, credential, connector)
    assert support.state is state
    assert says in support.reason
    assert support.source  # every reason has its source


def test_every_rule_names_its_source_and_the_fields_are_the_specs() -> None:
    assert all(rule.source for rule in REFERENCE_RULES)
    assert {reference_field(t) for t in CredentialType} - {None} == {
        "passwordReference",
        "keyReference",
        "tokenReference",
        "servicePrincipalSecretReference",
    }
    assert reference_field(CredentialType.WINDOWS) is None


def _binding(**extra: object):  # type: ignore[no-untyped-def]
    raw = {
        "name": "lake",
        "secret": "lake-secret",
        "credentialType": "Basic",
        "username": "svc",
        "targets": [{"connectionId": CONN}],
    }
    raw.update(extra)
    return parse_bindings({"bindings": [raw]}).bindings[0]


def test_the_reference_request_carries_no_secret_and_no_version() -> None:
    binding = _binding()
    resolved = resolve_credential(binding, "Pw#secret-value")
    body = reference_request(
        binding,
        resolved,
        Connection(CONN, "ShareableCloud"),
        vault_connection_id=KV,
        secret_name="lake-secret",
    )
    assert body == {
        "connectivityType": "ShareableCloud",
        "credentialDetails": {
            "credentials": {
                "credentialType": "Basic",
                "username": "svc",
                "passwordReference": {"connectionId": KV, "secretName": "lake-secret"},
            },
            "skipTestConnection": False,
        },
    }
    assert "Pw#secret-value" not in json.dumps(body)
    with pytest.raises(UnsupportedConnection):
        reference_request(
            binding, resolved, Connection(CONN, "OnPremisesGateway"), vault_connection_id=KV, secret_name="x"
        )


@pytest.mark.parametrize(
    ("marked", "recorded", "action"),
    [
        (False, None, None),
        (True, None, Action.REFERENCED),
        (False, "referenced", Action.REFERENCED),
        (True, "referenced", Action.REFERENCED),
        (False, "in-doubt", Action.FAILED),
        (True, "in-doubt", Action.FAILED),
        (True, "released", Action.FAILED),
        (False, "released", None),
    ],
)
def test_a_connection_is_sent_a_copy_only_when_nothing_says_it_references_key_vault(
    marked: bool, recorded: str | None, action: Action | None
) -> None:
    decision = reference_decision(marked=marked, recorded=recorded, connection=CONN)
    assert (None if decision is None else decision.action) is action


@pytest.mark.parametrize(
    ("marked", "recorded", "reason"),
    [
        (
            False,
            "in-doubt",
            f"`adopt` is moving connection {CONN}, or the answer to `adopt` was lost: whether it references "
            "Key Vault or still holds its copy is unknown, so nothing is sent. Look at it in Manage "
            "connections and gateways, then run `adopt ... --yes` again or `adopt --release`",
        ),
        (
            True,
            "released",
            f"connection {CONN} was moved back to a copy (`adopt --release`), but the bindings still mark "
            'it "keyVaultReference": true: remove the mark (nothing is sent until the two agree)',
        ),
        (
            True,
            None,
            f"connection {CONN} references Key Vault: Fabric reads the current version itself, so no copy "
            "is sent",
        ),
        (
            False,
            "referenced",
            f"connection {CONN} was moved onto a Key Vault reference by `adopt` (the ledger says so): no "
            'copy is sent; mark its target "keyVaultReference": true in the bindings',
        ),
    ],
    ids=["adopt-in-doubt", "released-but-marked", "marked", "adopted-not-marked"],
)
def test_a_connection_that_is_sent_nothing_tells_the_operator_why_and_what_to_do(
    marked: bool, recorded: str | None, reason: str
) -> None:
    decision = reference_decision(marked=marked, recorded=recorded, connection=CONN)
    assert decision is not None and decision.reason == reason


def _referenced(applied_at: float | None, **extra: object) -> SourceEvidence:
    return SourceEvidence(
        ("connections", CONN),
        CONN,
        Action.REFERENCED,
        holds_current=applied_at is not None,
        applied_at=applied_at,
        account="user:svc|lake-secret|v2",
        **extra,  # type: ignore[arg-type]
    )


def test_the_refresh_gate_reads_a_referenced_connection_by_when_its_version_became_presentable() -> None:
    key = ("connections", CONN)
    # the failed refresh started before the version was presentable: it read an older one
    allowed = may_refresh([_referenced(1000.0)], FailureEvidence(900.0, key))
    assert allowed.allowed and allowed.probe_accounts == ("user:svc|lake-secret|v2",)
    # it failed on this very version: wait for a new one
    assert not may_refresh([_referenced(1000.0)], FailureEvidence(1100.0, key)).allowed
    # the account refused the version (a refresh that went first): no more refreshes on it
    assert not may_refresh(
        [_referenced(1000.0, account_verdict="rejected")], FailureEvidence(900.0, key)
    ).allowed
    # unknown version: wait
    assert not may_refresh([_referenced(None)], FailureEvidence(900.0, key)).allowed


def _failure(
    underlying: str | None, message: str, code: str = "DMS_CredentialsNotFoundInAzureKeyVaultErrorCode"
) -> dict[str, object]:
    details = [
        {"code": "DM_ErrorDetailNameCode_UnderlyingErrorMessage", "detail": {"type": 1, "value": message}}
    ]
    if underlying:
        details.insert(
            0,
            {
                "code": "DM_ErrorDetailNameCode_UnderlyingErrorCode",
                "detail": {"type": 1, "value": underlying},
            },
        )
    envelope = {"error": {"code": code, "pbi.error": {"code": code, "parameters": {}, "details": details}}}
    return {"status": "Failed", "serviceExceptionJson": json.dumps(envelope)}


@pytest.mark.parametrize(
    ("entry", "cause", "fix"),
    [
        (
            _failure("SecretNotFound", "A secret with (name/id) x was not found in this key vault."),
            "reference-not-found",
            "pin a version",
        ),
        (_failure(None, ""), "reference-not-found", "exists and is enabled"),
        (
            _failure("ForbiddenByConnection", "Public network access is disabled"),
            "reference-network",
            "public network",
        ),
        (
            _failure(
                "ForbiddenByFirewall", "Client address is not authorized and caller is not a trusted service."
            ),
            "reference-network",
            "--release",
        ),
        (
            _failure("AADSTS700082", "AADSTS700082: The refresh token has expired due to inactivity."),
            "reference-credential-expired",
            "sign in again",
        ),
        (
            _failure("Forbidden", "The user does not have secrets get permission"),
            "reference-denied",
            "Get and List",
        ),
        (_failure("X", "", code="DMS_AzureKeyVaultSomethingNew"), "reference-not-found", "adopt"),
    ],
)
def test_a_reference_fabric_cannot_read_is_its_own_diagnosis_and_no_credential_failure(
    entry: dict[str, object], cause: str, fix: str
) -> None:
    diagnosis = diagnose_refresh(entry)
    assert diagnosis.category is Category.REFERENCE and diagnosis.cause == cause
    assert fix in diagnosis.fix and "Credentials were not changed" in diagnosis.fix
    assert not diagnosis.credential_related and not diagnosis.refused_sign_in


def test_the_mark_is_written_into_a_bindings_document_and_validated() -> None:
    doc = {
        "bindings": [
            {"name": "lake", "secret": "s", "credentialType": "Key", "targets": [{"connectionId": CONN}]}
        ]
    }
    marked = with_reference_mark(doc, "lake", CONN.upper(), marked=True)
    assert marked["bindings"][0]["targets"] == [{"connectionId": CONN, "keyVaultReference": True}]
    assert doc["bindings"][0]["targets"] == [{"connectionId": CONN}]  # a copy
    assert with_reference_mark(marked, "lake", CONN, marked=False)["bindings"][0]["targets"] == [
        {"connectionId": CONN}
    ]
    matched = {
        "bindings": [
            {
                "name": "lake",
                "secret": "s",
                "credentialType": "Key",
                "targets": [{"match": {"kind": "connection", "server": "lake"}}],
            }
        ]
    }
    added = with_reference_mark(matched, "lake", CONN, marked=True)["bindings"][0]["targets"]
    assert added[-1] == {"connectionId": CONN, "keyVaultReference": True}
    with pytest.raises(BindingsError):
        with_reference_mark(doc, "nope", CONN, marked=True)
