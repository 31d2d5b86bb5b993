"""A throw-away certificate authority for the sandbox (``trustme``).

Clients trust the sandbox through ``REQUESTS_CA_BUNDLE`` / ``SSL_CERT_FILE`` pointing at the CA
file written here; nothing ever turns TLS verification off.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from dataclasses import dataclass

import trustme


@dataclass
class SandboxTLS:
    ca_path: str  # PEM of the CA, what clients trust
    server_context: ssl.SSLContext
    client_context: ssl.SSLContext  # trusts the CA, for the sandbox's own outgoing calls


def make_tls(directory: str | None = None) -> SandboxTLS:
    """Create a CA and a server certificate for 127.0.0.1, ::1 and localhost."""
    ca = trustme.CA(organization_name="Power BI credential healer sandbox")
    cert = ca.issue_cert("127.0.0.1", "::1", "localhost")
    directory = directory or tempfile.mkdtemp(prefix="pbi-sandbox-")
    ca_path = os.path.join(directory, "sandbox-ca.pem")
    ca.cert_pem.write_to_path(ca_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    return SandboxTLS(ca_path=ca_path, server_context=server_context, client_context=client_context)
