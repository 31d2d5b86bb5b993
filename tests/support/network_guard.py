"""Python source to run first in a child process: it refuses, and remembers in ``attempts``, any
DNS lookup of another host or connection to a non-loopback address. Tests of the telemetry
exporter use it to prove that nothing leaves the machine."""

from __future__ import annotations

import textwrap

GUARD = textwrap.dedent(
    """
    import json, logging, os, socket, sys

    LOCAL = {"127.0.0.1", "::1", "localhost"}
    attempts = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(self, address):
        if isinstance(address, tuple) and address[0] not in LOCAL:
            attempts.append(f"connect {address[0]}")
            raise OSError("blocked by the test")
        return real_connect(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if host is not None and host not in LOCAL:
            attempts.append(f"dns {host}")
            raise socket.gaierror("blocked by the test")
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo
    """
)
