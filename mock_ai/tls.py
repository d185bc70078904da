"""The mock providers over TLS: a server context, a count of TLS hellos, a throwaway CA to rehearse with."""

from __future__ import annotations

import ssl
from pathlib import Path

from .stats import Stats


def server_context(cert: str | Path, key: str | Path, client_ca: str | Path | None = None,
                   stats: Stats | None = None) -> ssl.SSLContext:
    """Serve `cert` (PEM chain) with `key`; with `client_ca`, every client must present a
    certificate it signed (mutual TLS). With `stats`, every TLS ClientHello is counted in
    `/_mock/stats` as `tls_hellos` (the stats request's own included): a refused handshake
    never reaches a handler, so this is how a test sees that a client did not retry."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if client_ca:
        context.load_verify_locations(cafile=client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    if stats is not None:
        stats.tls_hellos = 0

        def hello(sslobj, server_name, ctx) -> None:  # OpenSSL calls it for every ClientHello, SNI or not
            stats.tls_hellos = (stats.tls_hellos or 0) + 1

        context.sni_callback = hello
    return context


def throwaway(directory: str | Path, names: tuple[str, ...] = ("localhost", "127.0.0.1")) -> tuple[Path, Path, Path]:
    """Make a private CA and a certificate for `names` in `directory`; returns (cert, key, ca).
    Trust `ca.pem` on the client side (`ca_file`, `SSL_CERT_FILE`, `matrix chat --ca-file`)."""
    import trustme  # only here: the mock itself needs no certificate machinery

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="Transport Matrix throwaway CA")
    leaf = ca.issue_cert(*names)
    paths = directory / "cert.pem", directory / "key.pem", directory / "ca.pem"
    leaf.cert_chain_pems[0].write_to_path(paths[0])
    for pem in leaf.cert_chain_pems[1:]:
        pem.write_to_path(paths[0], append=True)
    leaf.private_key_pem.write_to_path(paths[1])
    ca.cert_pem.write_to_path(paths[2])
    return paths
