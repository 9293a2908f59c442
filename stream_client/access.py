"""How the client reaches a server that wants TLS or an access key: `Tls` and the headers sent with every call.

A Triton server started with `--grpc-restricted-protocol=PROTOCOLS:KEY=VALUE` answers those gRPC protocols only
when the call carries the header `triton-grpc-protocol-KEY: VALUE` (gRPC; HTTP wants `KEY: VALUE`), so:

    segment-video video.mp4 --url host:8001 --tls-ca ca.crt --header-from-env triton-grpc-protocol-segment-key=KEY

`--header-from-env NAME=ENVVAR` reads the value from the environment, so that a key need not be on the command line
(where `ps` shows it to every user of the machine).
"""

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass(frozen=True)
class Tls:
    """gRPC over TLS. Without `root_certificates` the system's roots check the server's certificate; a client
    certificate (`certificate_chain` and `private_key`, PEM) is for servers that want mutual TLS."""

    root_certificates: Path | None = None
    private_key: Path | None = None
    certificate_chain: Path | None = None

    def __post_init__(self) -> None:
        if (self.private_key is None) != (self.certificate_chain is None):
            raise ValueError("a client certificate needs both its chain (--tls-cert) and its key (--tls-key)")
        for path in (self.root_certificates, self.private_key, self.certificate_chain):
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"no such TLS file: {path}")

    def client_options(self) -> dict[str, str | bool | None]:
        """Keyword arguments of `tritonclient.grpc.InferenceServerClient`."""

        def text(path: Path | None) -> str | None:
            return None if path is None else str(path)

        return dict(
            ssl=True,
            root_certificates=text(self.root_certificates),
            private_key=text(self.private_key),
            certificate_chain=text(self.certificate_chain),
        )

    def credentials(self) -> grpc.ChannelCredentials:
        """The same, for a gRPC channel of one's own (the client's stream)."""

        def read(path: Path | None) -> bytes | None:
            return None if path is None else Path(path).read_bytes()

        return grpc.ssl_channel_credentials(
            read(self.root_certificates), read(self.private_key), read(self.certificate_chain)
        )


def add_access_arguments(parser: argparse.ArgumentParser) -> None:
    """The client's TLS and header options, as a group of `parser`."""
    group = parser.add_argument_group("access (TLS, access keys)")
    group.add_argument(
        "--tls", action="store_true", help="gRPC over TLS, the server's certificate checked by the system's roots"
    )
    group.add_argument(
        "--tls-ca", type=Path, metavar="FILE", help="gRPC over TLS, the server's certificate checked by this CA (PEM)"
    )
    group.add_argument("--tls-cert", type=Path, metavar="FILE", help="a client certificate chain (PEM), for mutual TLS")
    group.add_argument("--tls-key", type=Path, metavar="FILE", help="the client certificate's private key (PEM)")
    group.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a header sent with every call (repeatable); for a Triton access key over gRPC: "
        "triton-grpc-protocol-KEY=VALUE",
    )
    group.add_argument(
        "--header-from-env",
        action="append",
        default=[],
        metavar="NAME=ENVVAR",
        help="a header whose value is read from the environment variable ENVVAR (keeps a key off the command line)",
    )


def _pair(text: str, option: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise ValueError(f"{option} wants NAME=VALUE, got {text!r}")
    return name.lower(), value  # gRPC metadata keys are lowercase


def parse_headers(
    pairs: list[str] = (), from_env: list[str] = (), environ: dict[str, str] | None = None
) -> dict[str, str]:
    """`["name=value"]` and `["name=ENVVAR"]` -> {name: value}; an unset variable is an error, naming it."""
    environ = os.environ if environ is None else environ
    headers = dict(_pair(p, "--header") for p in pairs)
    for text in from_env:
        name, variable = _pair(text, "--header-from-env")
        if variable not in environ:
            raise ValueError(f"--header-from-env {name}={variable}: the environment variable {variable} is not set")
        headers[name] = environ[variable]
    return headers


def access_from(args: argparse.Namespace) -> tuple[Tls | None, dict[str, str]]:
    """What `add_access_arguments` parsed -> (TLS or None for plain gRPC, headers). Raises ValueError on a bad pair,
    FileNotFoundError on a missing file."""
    headers = parse_headers(args.header, args.header_from_env)
    files = (args.tls_ca, args.tls_key, args.tls_cert)
    if not args.tls and all(f is None for f in files):
        return None, headers
    return Tls(root_certificates=args.tls_ca, private_key=args.tls_key, certificate_chain=args.tls_cert), headers
