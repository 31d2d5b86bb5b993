"""The Entra ID stand-in, proven with the real msal and azure-identity, unmodified.

Settings a non-Microsoft authority needs (they go into the product):
- msal: ``authority=f"{host}/{tenant}"`` and ``instance_discovery=False`` (``validate_authority`` may
  stay at its default: with instance discovery off msal only fetches the tenant's OpenID document).
- azure-identity: ``authority=host`` (or ``AZURE_AUTHORITY_HOST``) and ``disable_instance_discovery=True``.
"""

from __future__ import annotations

import warnings
from typing import Any

import msal
import pytest
import requests
from azure.identity import ClientSecretCredential, ManagedIdentityCredential
from cryptography.hazmat.primitives import hashes

from sandbox import Sandbox
from sandbox.entra import KEYVAULT_AUDIENCE, POWERBI_AUDIENCE, App
from tests.support.certs import make_client_certificate
from tests.support.ports import require_user_realm_port

pytestmark = pytest.mark.sandbox

PBI_SCOPE = POWERBI_AUDIENCE + "/.default"
UPN = "svc.dataflow@contoso.com"
PASSWORD = "Correct#Horse1"


@pytest.fixture
def app(sb: Sandbox) -> App:
    return sb.entra.add_app(name="healer")


def _confidential(sb: Sandbox, client_id: str, secret: str) -> msal.ConfidentialClientApplication:
    return msal.ConfidentialClientApplication(
        client_id,
        client_credential=secret,
        authority=f"{sb.url}/{sb.entra.tenant_id}",
        instance_discovery=False,
    )


def _public(sb: Sandbox, client_id: str) -> msal.PublicClientApplication:
    return msal.PublicClientApplication(
        client_id, authority=f"{sb.url}/{sb.entra.tenant_id}", instance_discovery=False
    )


def _ropc(pca: msal.PublicClientApplication, username: str, password: str) -> dict[str, Any]:
    with warnings.catch_warnings():  # msal deprecates ROPC for public clients; the product needs it
        warnings.simplefilter("ignore", DeprecationWarning)
        result: dict[str, Any] = pca.acquire_token_by_username_password(username, password, [PBI_SCOPE])
    return result


def _needs_port_443(sb: Sandbox) -> None:
    require_user_realm_port(sb)


def test_msal_confidential_client_gets_an_app_token_from_a_custom_authority(
    sb: Sandbox, sandbox_env: dict[str, str], app: App
) -> None:
    cca = _confidential(sb, app.client_id, app.secret or "")

    result = cca.acquire_token_for_client([PBI_SCOPE])
    again = cca.acquire_token_for_client([PBI_SCOPE])

    assert result["token_type"] == "Bearer" and result["expires_in"] > 3000, result.get("error_description")
    [issued] = sb.entra.tokens_issued("app")
    assert (issued.token, issued.principal, issued.audience) == (
        result["access_token"],
        app.client_id,
        POWERBI_AUDIENCE,
    )
    assert again["access_token"] == result["access_token"] and again["token_source"] == "cache"
    # Only the tenant's OpenID document and the token endpoint: no instance discovery anywhere.
    assert [r.route for r in sb.requests.all()] == ["entra.openid", "entra.token"]


def test_wrong_client_secret_is_refused_with_aadsts7000215(
    sb: Sandbox, sandbox_env: dict[str, str], app: App
) -> None:
    result = _confidential(sb, app.client_id, "not-the-secret").acquire_token_for_client([PBI_SCOPE])

    assert result["error"] == "invalid_client"
    assert result["error_description"].startswith("AADSTS7000215:")
    assert result["error_codes"] == [7000215]
    assert sb.requests.find("entra.token")[0].status == 401
    assert sb.entra.tokens_issued() == []


def test_unknown_application_is_refused_with_aadsts700016(sb: Sandbox, sandbox_env: dict[str, str]) -> None:
    result = _confidential(sb, "11111111-2222-3333-4444-555555555555", "x").acquire_token_for_client(
        [PBI_SCOPE]
    )

    assert result["error"] == "unauthorized_client"
    assert "AADSTS700016" in result["error_description"]


@pytest.mark.user_realm
def test_username_password_flow_asks_user_realm_on_port_443_then_gets_a_user_token(
    sb: Sandbox, sandbox_env: dict[str, str], app: App
) -> None:
    _needs_port_443(sb)
    sb.entra.add_user(UPN, PASSWORD)
    pca = _public(sb, app.client_id)

    result = _ropc(pca, UPN, PASSWORD)

    assert "access_token" in result, result.get("error_description")
    [realm] = sb.requests.find("entra.userrealm")
    assert realm.path == f"/common/userrealm/{UPN}" and realm.query == {"api-version": "1.0"}
    assert realm.headers["Host"] == "127.0.0.1"  # no port in the Host header: it came to 443
    [issued] = sb.entra.tokens_issued("user")
    assert (issued.principal, issued.audience) == (UPN, POWERBI_AUDIENCE)
    assert issued.token == result["access_token"]
    assert result["id_token_claims"]["preferred_username"] == UPN
    # msal's cache understood the account (client_info + id_token) and can refresh silently.
    [account] = pca.get_accounts(username=UPN)
    refreshed = pca.acquire_token_silent([PBI_SCOPE], account=account, force_refresh=True)
    assert refreshed is not None and refreshed["access_token"] != result["access_token"]
    token_forms = [r.raw_body.decode() for r in sb.requests.find("entra.token")]
    assert ["grant_type=password" in f for f in token_forms] == [True, False]
    assert "grant_type=refresh_token" in token_forms[1]


@pytest.mark.user_realm
@pytest.mark.parametrize(
    ("username", "password", "code"),
    [(UPN, "wrong", 50126), ("nobody@contoso.com", PASSWORD, 50034)],
    ids=["wrong-password", "unknown-user"],
)
def test_username_password_flow_reports_bad_credentials_like_entra(
    sb: Sandbox, sandbox_env: dict[str, str], app: App, username: str, password: str, code: int
) -> None:
    _needs_port_443(sb)
    sb.entra.add_user(UPN, PASSWORD)

    result = _ropc(_public(sb, app.client_id), username, password)

    assert result["error"] == "invalid_grant"
    assert result["error_description"].startswith(f"AADSTS{code}:")
    assert sb.entra.tokens_issued() == []


def test_azure_identity_client_secret_credential_uses_the_sandbox_authority(
    sb: Sandbox, sandbox_env: dict[str, str], app: App
) -> None:
    credential = ClientSecretCredential(
        sb.entra.tenant_id, app.client_id, app.secret or "", authority=sb.url, disable_instance_discovery=True
    )

    token = credential.get_token(KEYVAULT_AUDIENCE + "/.default")

    [issued] = sb.entra.tokens_issued("app")
    assert issued.token == token.token and issued.audience == KEYVAULT_AUDIENCE
    assert {r.route for r in sb.requests.all()} == {"entra.openid", "entra.token"}


def test_managed_identity_credential_gets_a_system_assigned_token(
    sb: Sandbox, sandbox_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    system = sb.entra.add_managed_identity()
    sb.entra.add_managed_identity()  # a user-assigned one, not asked for
    for key, value in sb.entra.managed_identity_env().items():
        monkeypatch.setenv(key, value)

    token = ManagedIdentityCredential().get_token(KEYVAULT_AUDIENCE + "/.default")

    [issued] = sb.entra.tokens_issued("managed_identity")
    assert (issued.token, issued.principal, issued.audience) == (
        token.token,
        system.client_id,
        KEYVAULT_AUDIENCE,
    )
    [call] = sb.requests.find("entra.msi")
    assert call.query == {"api-version": "2019-08-01", "resource": KEYVAULT_AUDIENCE}
    assert call.headers["X-IDENTITY-HEADER"] == sb.entra.identity_header


def test_managed_identity_credential_gets_a_user_assigned_token(
    sb: Sandbox, sandbox_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sb.entra.add_managed_identity()
    user_assigned = sb.entra.add_managed_identity()
    env = sb.entra.managed_identity_env(user_assigned)
    assert env["AZURE_CLIENT_ID"] == user_assigned.client_id
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    token = ManagedIdentityCredential(client_id=user_assigned.client_id).get_token(PBI_SCOPE)

    [issued] = sb.entra.tokens_issued("managed_identity")
    assert (issued.token, issued.principal, issued.audience) == (
        token.token,
        user_assigned.client_id,
        POWERBI_AUDIENCE,
    )
    assert sb.requests.find("entra.msi")[0].query["client_id"] == user_assigned.client_id


@pytest.mark.parametrize(("header", "status"), [(None, 400), ("not-the-header", 401)])
def test_msi_endpoint_demands_the_identity_header(
    sb: Sandbox, sandbox_env: dict[str, str], header: str | None, status: int
) -> None:
    sb.entra.add_managed_identity()
    headers = {} if header is None else {"X-IDENTITY-HEADER": header}

    response = requests.get(
        f"{sb.url}/msi/token",
        params={"api-version": "2019-08-01", "resource": KEYVAULT_AUDIENCE},
        headers=headers,
        timeout=10,
    )

    assert response.status_code == status
    assert set(response.json()) == {"statusCode", "message", "correlationId"}
    assert sb.entra.tokens_issued() == []


@pytest.mark.parametrize(
    ("form", "error", "code"),
    [
        ({"client_id": "x"}, "invalid_request", 900144),
        ({"grant_type": "authorization_code", "client_id": "x"}, "unsupported_grant_type", 70003),
        ({"grant_type": "client_credentials", "scope": "User.Read"}, "invalid_scope", 1002012),
    ],
    ids=["missing-grant-type", "unsupported-grant", "scope-without-default"],
)
def test_token_endpoint_answers_bad_requests_in_the_oauth_error_shape(
    sb: Sandbox, sandbox_env: dict[str, str], app: App, form: dict[str, str], error: str, code: int
) -> None:
    if form.get("grant_type") == "client_credentials":
        form = {**form, "client_id": app.client_id, "client_secret": app.secret or ""}

    response = requests.post(f"{sb.url}/{sb.entra.tenant_id}/oauth2/v2.0/token", data=form, timeout=10)

    assert response.status_code == 400
    body = response.json()
    assert body["error"] == error and body["error_codes"] == [code]
    assert body["error_description"].startswith(f"AADSTS{code}:")
    assert {"timestamp", "trace_id", "correlation_id"} <= set(body)


def test_unknown_tenant_has_no_openid_configuration(sb: Sandbox, sandbox_env: dict[str, str]) -> None:
    response = requests.get(f"{sb.url}/contoso.example/v2.0/.well-known/openid-configuration", timeout=10)

    assert response.status_code == 400
    assert response.json()["error_codes"] == [90002]


def test_openid_configuration_points_every_endpoint_at_the_sandbox(
    sb: Sandbox, sandbox_env: dict[str, str]
) -> None:
    tenant = sb.entra.tenant_id
    config = requests.get(f"{sb.url}/{tenant}/v2.0/.well-known/openid-configuration", timeout=10).json()

    assert config["issuer"] == f"{sb.url}/{tenant}/v2.0"
    assert config["token_endpoint"] == f"{sb.url}/{tenant}/oauth2/v2.0/token"
    endpoints = {k: v for k, v in config.items() if k.endswith(("_endpoint", "_uri"))}
    assert endpoints and all(v.startswith(sb.url + "/") for v in endpoints.values())
    assert requests.get(config["jwks_uri"], timeout=10).json() == {"keys": []}


@pytest.mark.parametrize("style", ["public_certificate", "thumbprint"])
def test_msal_signs_in_with_a_certificate_assertion(
    sb: Sandbox, sandbox_env: dict[str, str], style: str
) -> None:
    # msal signs PS256 with x5t#S256 when it has the certificate, RS256 with x5t from a thumbprint.
    cert = make_client_certificate()
    app = sb.entra.add_app(name="cert-app", certificate=cert.cert_pem)
    credential: dict[str, str] = {"private_key": cert.key_pem.decode()}
    if style == "public_certificate":
        credential["public_certificate"] = cert.cert_pem.decode()
    else:
        credential["thumbprint"] = cert.cert.fingerprint(hashes.SHA1()).hex()  # noqa: S303
    cca = msal.ConfidentialClientApplication(
        app.client_id,
        client_credential=credential,
        authority=f"{sb.url}/{sb.entra.tenant_id}",
        instance_discovery=False,
    )

    result = cca.acquire_token_for_client([PBI_SCOPE])

    assert "access_token" in result, result
    (issued,) = sb.entra.tokens_issued("app")
    assert (issued.principal, issued.audience) == (app.client_id, POWERBI_AUDIENCE)


def test_an_assertion_signed_by_another_certificate_is_refused(
    sb: Sandbox, sandbox_env: dict[str, str]
) -> None:
    registered, other = make_client_certificate(), make_client_certificate()
    app = sb.entra.add_app(name="cert-app", certificate=registered.cert_pem)
    impostor = {
        "private_key": other.key_pem.decode(),
        "thumbprint": registered.cert.fingerprint(hashes.SHA1()).hex(),
    }  # noqa: S303
    cca = msal.ConfidentialClientApplication(
        app.client_id,
        client_credential=impostor,
        authority=f"{sb.url}/{sb.entra.tenant_id}",
        instance_discovery=False,
    )

    result = cca.acquire_token_for_client([PBI_SCOPE])

    assert "access_token" not in result
    assert "AADSTS700027" in result["error_description"]
    assert sb.entra.tokens_issued("app") == []
