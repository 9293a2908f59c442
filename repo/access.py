"""Who may call the server: an access key for its protocols, TLS for gRPC, model control off.

`access_args(Access(...))` gives the tritonserver options (checked against the nvidia-pytriton wheel's tritonserver
2.51 and Triton's "Limit Endpoint Access" documentation):

    --grpc-restricted-protocol=<protocol>,<protocol>,...:<key>=<value>
    --http-restricted-api=<api>,<api>,...:<key>=<value>
    --grpc-use-ssl=true --grpc-server-cert=FILE --grpc-server-key=FILE [--grpc-root-cert=FILE]
    --grpc-use-ssl-mutual=true --grpc-root-cert=FILE      (clients need a certificate signed by that CA)
    --model-control-mode=none                             (or explicit, with --load-model=*)

With a key, every protocol but `health` answers only calls that carry it: over gRPC as the header
`triton-grpc-protocol-<key>: <value>`, over HTTP as `<key>: <value>`. Health stays open on both, on purpose:
`TritonServer.ready()`, Kubernetes' probes (HTTP /v2/health/*) and the chart's helm test (gRPC ServerReady,
ModelReady) call it without a key; it tells whether the server and a model are ready, nothing more. A protocol may
be in one group only; with a separate control key, `model-repository` (index, load, unload) is its own group.

Model control is off unless asked (`--model-control-mode=none`: the models of the repository load at the start and
no call loads or unloads one). With `model_control`, the server starts in explicit mode with every model loaded, and
needs a key: the model-repository protocol answers only the control key (or the access key when there is no
separate one).

Triton reads the key's value from its command line only: anyone on the machine who can list processes sees it.
In Kubernetes the chart expands it from a Secret (`$(VAR)` in the container's args).
"""

import re
from dataclasses import dataclass
from pathlib import Path

# Triton's restricted protocol groups (tritonserver --help), the same names for gRPC protocols and HTTP APIs.
PROTOCOLS = (
    "health",
    "metadata",
    "inference",
    "shared-memory",
    "model-config",
    "model-repository",
    "statistics",
    "trace",
    "logging",
)
OPEN = ("health",)  # readiness and liveness, for probes
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"  # Triton prepends it to the key for gRPC calls
# A key is a header name: lowercase, since gRPC refuses metadata keys with capitals.
_KEY_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")


@dataclass(frozen=True)
class Access:
    """`key_name`/`key_value`: the access key of every protocol but health. `control_key_name`/`control_key_value`:
    a separate key for model-repository (index, load, unload). `tls_cert`/`tls_key` (PEM): gRPC over TLS;
    `tls_ca`: the CA that client certificates must be signed by (`mutual_tls`). `model_control`: allow loading and
    unloading models through the API (explicit mode); off: `--model-control-mode=none`."""

    key_name: str | None = None
    key_value: str | None = None
    control_key_name: str | None = None
    control_key_value: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    mutual_tls: bool = False
    model_control: bool = False

    def __post_init__(self) -> None:
        for name, value, what in (
            (self.key_name, self.key_value, "key"),
            (self.control_key_name, self.control_key_value, "control key"),
        ):
            if (name is None) != (value is None):
                raise ValueError(f"the {what} needs both a name and a value")
            if name is not None and not _KEY_NAME.match(name):
                raise ValueError(f"the {what}'s name {name!r} is not a lowercase header name (a-z, 0-9, -)")
            if value is not None and not value:
                raise ValueError(f"the {what}'s value is empty")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both the server's certificate and its key")
        if self.mutual_tls and (self.tls_cert is None or self.tls_ca is None):
            raise ValueError(
                "mutual TLS needs the server's certificate and key, and the CA of the clients' certificates"
            )
        if self.model_control and self.key_name is None and self.control_key_name is None:
            raise ValueError("model control without a key would let anyone load and unload models: give one")

    @property
    def grpc_header(self) -> str | None:
        """The header a gRPC client sends the access key in."""
        return None if self.key_name is None else GRPC_HEADER_PREFIX + self.key_name

    @property
    def grpc_control_header(self) -> str | None:
        name = self.control_key_name or self.key_name
        return None if name is None else GRPC_HEADER_PREFIX + name


def restricted(protocols: list[str] | tuple[str, ...], name: str, value: str) -> list[str]:
    """One restricted group, for gRPC and for HTTP."""
    group = ",".join(protocols)
    return [f"--grpc-restricted-protocol={group}:{name}={value}", f"--http-restricted-api={group}:{name}={value}"]


def access_args(a: Access) -> list[str]:
    """The tritonserver options for `a`."""
    args = []
    separate_control = a.control_key_name is not None
    if a.key_name is not None:
        keyed = [p for p in PROTOCOLS if p not in OPEN and not (separate_control and p == "model-repository")]
        args += restricted(keyed, a.key_name, a.key_value)
    if separate_control:
        args += restricted(["model-repository"], a.control_key_name, a.control_key_value)
    if a.model_control:
        args += ["--model-control-mode=explicit", "--load-model=*"]
    else:
        args += ["--model-control-mode=none"]
    if a.tls_cert is not None:
        args += [
            "--grpc-use-ssl-mutual=true" if a.mutual_tls else "--grpc-use-ssl=true",
            f"--grpc-server-cert={a.tls_cert}",
            f"--grpc-server-key={a.tls_key}",
        ]
        if a.tls_ca is not None:
            args.append(f"--grpc-root-cert={a.tls_ca}")
    return args
