"""Access control through real tritonservers on loopback: an access key (restricted protocols), TLS, mutual TLS, model
control off; the client's refusals are one clear line naming the server and the cause.

Each kind of server is started once per class (so that only one extra server runs at a time); certificates are made
with openssl in a temporary folder: a CA, a server certificate for 127.0.0.1 and localhost, a client certificate.
"""

import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
from conftest import SETTINGS
from helpers import collect
from tritonclient.utils import InferenceServerException

from repo.access import Access, access_args
from repo.build import build
from repo.models import server_args
from repo.serve import TritonServer
from stream_client.access import Tls, access_from, add_access_arguments, parse_headers
from stream_client.cli import main
from stream_client.stream import SegmentationStream, StreamError

KEY = "s3cr3t+/key=="  # base64-like: '=', '/' and '+' pass through the flag and the header
HEADER = "triton-grpc-protocol-segment-key"  # what Triton wants for the key named segment-key
ADMIN = "admin-key-value"
ADMIN_HEADER = "triton-grpc-protocol-segment-admin"
FRAMES = 10  # with SETTINGS' 8 frames per chunk: two chunks


# ---- fixtures ----------------------------------------------------------------------------------------------------


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certs(folder: Path, server_name: str = "server") -> Path:
    """In `folder`: ca.crt; {server_name}.crt/.key (127.0.0.1, localhost; serverAuth); client.crt/.key (clientAuth);
    all signed by ca, with openssl."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=folder)  # fmt: skip
    usages = {
        server_name: "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        "client": "extendedKeyUsage=clientAuth\n",
    }
    for who, extensions in usages.items():
        (folder / f"{who}.ext").write_text(extensions + "basicConstraints=CA:FALSE\n")
        openssl("req", *ec, "-keyout", f"{who}.key", "-out", f"{who}.csr", "-subj", f"/CN={who}", cwd=folder)
        openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{who}.crt", "-days", "2", "-extfile", f"{who}.ext", cwd=folder)  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    return make_certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    return build(SETTINGS, tmp_path_factory.mktemp("access-repo") / "repo")


def serve(repository: Path, access: Access) -> Iterator[TritonServer]:
    with TritonServer(repository, args=[*server_args(SETTINGS), *access_args(access)]) as running:
        yield running


def segments(url: str, video, **access) -> int:
    """Frames back for one small video through a stream with these access options."""
    with SegmentationStream(url, idle_timeout=120, **access) as stream:
        stream.send("v", video(FRAMES, width=64, height=48))
        [chunks] = collect(stream, {"v"}).values()
    assert not isinstance(chunks, str), chunks
    return sum(len(c) for c in chunks)


def refusal(url: str, **access) -> str:
    with pytest.raises(StreamError) as refused:
        with SegmentationStream(url, **access):
            pass
    message = str(refused.value)
    assert url in message and "Traceback" not in message, message
    return message


def http_answer(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, str]:
    data = b"{}" if method == "POST" else None
    request = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def http(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> int:
    return http_answer(url, method, headers)[0]


# ---- the flags ---------------------------------------------------------------------------------------------------


def test_access_args_are_the_documented_flags(tmp_path):
    everything_but_health = "metadata,inference,shared-memory,model-config,model-repository,statistics,trace,logging"
    assert access_args(Access()) == ["--model-control-mode=none"]
    assert access_args(Access("segment-key", "v=1")) == [
        f"--grpc-restricted-protocol={everything_but_health}:segment-key=v=1",
        f"--http-restricted-api={everything_but_health}:segment-key=v=1",
        "--model-control-mode=none",
    ]
    control = Access("k", "v", "admin", "a", model_control=True)
    assert access_args(control) == [
        "--grpc-restricted-protocol=metadata,inference,shared-memory,model-config,statistics,trace,logging:k=v",
        "--http-restricted-api=metadata,inference,shared-memory,model-config,statistics,trace,logging:k=v",
        "--grpc-restricted-protocol=model-repository:admin=a",
        "--http-restricted-api=model-repository:admin=a",
        "--model-control-mode=explicit",
        "--load-model=*",
    ]
    assert (
        control.grpc_header == "triton-grpc-protocol-k" and control.grpc_control_header == "triton-grpc-protocol-admin"
    )
    cert, key, ca = tmp_path / "s.crt", tmp_path / "s.key", tmp_path / "ca.crt"
    assert access_args(Access(tls_cert=cert, tls_key=key))[1:] == [
        "--grpc-use-ssl=true", f"--grpc-server-cert={cert}", f"--grpc-server-key={key}",
    ]  # fmt: skip
    mutual = Access(tls_cert=cert, tls_key=key, tls_ca=ca, mutual_tls=True)
    assert access_args(mutual)[1:] == [
        "--grpc-use-ssl-mutual=true", f"--grpc-server-cert={cert}", f"--grpc-server-key={key}", f"--grpc-root-cert={ca}"
    ]  # fmt: skip


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(key_name="k"), "both a name and a value"),
        (dict(key_name="Segment-Key", key_value="v"), "lowercase"),
        (dict(model_control=True), "anyone load and unload"),
        (dict(tls_cert=Path("c")), "both the server's certificate and its key"),
        (dict(tls_cert=Path("c"), tls_key=Path("k"), mutual_tls=True), "CA of the clients"),
    ],
)
def test_access_refuses_incomplete_settings(kwargs, error):
    with pytest.raises(ValueError, match=error):
        Access(**kwargs)


def test_client_options_parse_headers_from_the_command_line_and_the_environment(tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    add_access_arguments(parser)
    ca = tmp_path / "ca.crt"
    ca.write_text("pem")
    args = parser.parse_args(["--tls-ca", str(ca), "--header", "X-Team=video", "--header-from-env", f"{HEADER}=K"])
    with pytest.MonkeyPatch.context() as env:
        env.setenv("K", KEY)
        tls, headers = access_from(args)
    assert tls == Tls(root_certificates=ca) and headers == {"x-team": "video", HEADER: KEY}
    assert access_from(parser.parse_args([])) == (None, {})
    assert access_from(parser.parse_args(["--tls"]))[0] == Tls()
    with pytest.raises(ValueError, match="NOT_SET is not set"):
        parse_headers(from_env=[f"{HEADER}=NOT_SET"], environ={})
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_headers(["no-equals-sign"])
    with pytest.raises(FileNotFoundError, match="missing.pem"):
        Tls(root_certificates=tmp_path / "missing.pem")
    with pytest.raises(ValueError, match="--tls-key"):
        Tls(certificate_chain=ca)


# ---- an access key -----------------------------------------------------------------------------------------------


class TestAccessKey:
    @pytest.fixture(scope="class")
    @classmethod
    def server(cls, repository) -> Iterator[TritonServer]:
        yield from serve(repository, Access("segment-key", KEY))

    def test_without_the_key_the_client_is_refused_clearly(self, server):
        message = refusal(server.url)
        assert "refused access" in message and HEADER in message and "not sent" in message, message

    def test_a_wrong_key_is_refused(self, server):
        message = refusal(server.url, headers={HEADER: "guess"})
        assert "refused access" in message and "value sent is wrong" in message, message

    def test_with_the_key_a_video_is_segmented(self, server, video):
        assert segments(server.url, video, headers={HEADER: KEY}) == FRAMES

    def test_the_cli_sends_the_key_from_the_environment(self, server, video_file, tmp_path, monkeypatch, capsys):
        source = video_file(FRAMES, width=64, height=48, codec="libvpx-vp9", suffix=".webm")
        common = [str(source), "--url", server.url, "--out", str(tmp_path / "out.mp4")]
        assert main(common) == 1
        err = capsys.readouterr().err
        assert f"the server at {server.url} refused access" in err and HEADER in err and "Traceback" not in err, err
        monkeypatch.setenv("SEGMENT_KEY", KEY)
        assert main([*common, "--header-from-env", f"{HEADER}=SEGMENT_KEY"]) == 0
        assert f"{FRAMES} frames" in capsys.readouterr().out

    def test_health_stays_open_and_the_rest_wants_the_key(self, server):
        assert http(f"{server.http_url}/v2/health/ready") == 200  # probes and TritonServer.ready()
        assert http(f"{server.http_url}/v2/health/live") == 200
        client = grpcclient.InferenceServerClient(server.url)
        assert client.is_server_ready() and client.is_model_ready("segment_video")
        with pytest.raises(InferenceServerException, match=f"expecting header '{HEADER}'"):
            client.get_server_metadata()
        assert client.get_server_metadata(headers={HEADER: KEY}).name == "triton"
        client.close()
        config = f"{server.http_url}/v2/models/segment_video/config"
        assert http(config) == 403 and http(config, headers={"segment-key": "guess"}) == 403
        assert http(config, headers={"segment-key": KEY}) == 200
        infer = f"{server.http_url}/v2/models/segment_video/infer"
        assert http(infer, "POST") == 403

    def test_model_control_is_off(self, server):
        client = grpcclient.InferenceServerClient(server.url)
        with pytest.raises(InferenceServerException, match="restricted"):
            client.get_model_repository_index()
        assert {m.name for m in client.get_model_repository_index(headers={HEADER: KEY}).models} >= {"segment_video"}
        for call in (client.load_model, client.unload_model):
            with pytest.raises(InferenceServerException, match="load / unload is not allowed"):
                call("segmenter", headers={HEADER: KEY})
        assert client.is_model_ready("segmenter")
        client.close()
        assert http(f"{server.http_url}/v2/repository/index", "POST") == 403
        load = f"{server.http_url}/v2/repository/models/segmenter/unload"
        status, body = http_answer(load, "POST", headers={"segment-key": KEY})
        assert status == 503 and "load / unload is not allowed" in body, (status, body)  # model control is off

    def test_a_tls_client_to_this_plain_server_fails_clearly(self, server, certs):
        message = refusal(server.url, tls=Tls(root_certificates=certs / "ca.crt"), headers={HEADER: KEY})
        assert "does not speak TLS" in message, message


# ---- TLS ---------------------------------------------------------------------------------------------------------


class TestTls:
    @pytest.fixture(scope="class")
    @classmethod
    def server(cls, repository, certs) -> Iterator[TritonServer]:
        yield from serve(repository, Access(tls_cert=certs / "server.crt", tls_key=certs / "server.key"))

    def test_a_client_trusting_the_ca_segments_a_video(self, server, certs, video):
        assert segments(server.url, video, tls=Tls(root_certificates=certs / "ca.crt")) == FRAMES

    def test_by_name_too(self, server, certs, video):
        url = server.url.replace("127.0.0.1", "localhost")
        assert segments(url, video, tls=Tls(root_certificates=certs / "ca.crt")) == FRAMES

    def test_a_plain_client_fails_clearly(self, server):
        message = refusal(server.url)
        assert "closed the connection" in message and "--tls" in message, message

    def test_a_client_without_the_ca_fails_clearly(self, server):
        message = refusal(server.url, tls=Tls())  # the system's roots do not know the test CA
        assert "does not trust" in message and "--tls-ca" in message, message

    def test_health_over_http_stays_open_for_probes(self, server):
        assert http(f"{server.http_url}/v2/health/ready") == 200


# ---- mutual TLS, with an access key ------------------------------------------------------------------------------


class TestMutualTlsWithAKey:
    """On an empty repository (a full one starts slowly on a CPU): the handshake is what differs from TLS above, and
    a stream over TLS is checked there."""

    @pytest.fixture(scope="class")
    @classmethod
    def server(cls, tmp_path_factory, certs) -> Iterator[TritonServer]:
        access = Access(
            "segment-key", KEY, tls_cert=certs / "server.crt", tls_key=certs / "server.key", tls_ca=certs / "ca.crt",
            mutual_tls=True,
        )  # fmt: skip
        yield from serve(tmp_path_factory.mktemp("empty-repo"), access)

    @pytest.fixture
    @classmethod
    def client_tls(cls, certs) -> Tls:
        return Tls(certs / "ca.crt", private_key=certs / "client.key", certificate_chain=certs / "client.crt")

    def test_a_client_with_a_certificate_and_the_key_is_served(self, server, client_tls):
        client = grpcclient.InferenceServerClient(server.url, **client_tls.client_options())
        assert client.get_server_metadata(headers={HEADER: KEY}).name == "triton"
        with pytest.raises(InferenceServerException, match=f"expecting header '{HEADER}'"):
            client.get_server_metadata()
        client.close()
        # Through the stream's checks: connected, past health, and the (empty) server has no such model.
        with pytest.raises(StreamError, match=f"the server at {server.url} has no ready model 'segment_video'"):
            SegmentationStream(server.url, tls=client_tls, headers={HEADER: KEY}).__enter__()

    def test_a_client_without_a_certificate_fails_clearly(self, server, certs):
        message = refusal(server.url, tls=Tls(certs / "ca.crt"), headers={HEADER: KEY})
        assert "closed the connection" in message and "--tls-cert" in message, message

    def test_a_certificate_not_for_clients_is_refused(self, server, certs):
        # The server's own certificate is signed by the same CA but only for serverAuth.
        tls = Tls(certs / "ca.crt", private_key=certs / "server.key", certificate_chain=certs / "server.crt")
        message = refusal(server.url, tls=tls, headers={HEADER: KEY})
        assert "closed the connection" in message and "client certificate" in message, message


# ---- model control, when asked for: its own key ------------------------------------------------------------------


class TestModelControlOn:
    @pytest.fixture(scope="class")
    @classmethod
    def server(cls, tmp_path_factory) -> Iterator[TritonServer]:
        # An empty repository: what is checked is who may call the repository API, not loading models.
        empty = tmp_path_factory.mktemp("empty-repo")
        yield from serve(empty, Access("segment-key", KEY, "segment-admin", ADMIN, model_control=True))

    def test_only_the_control_key_reaches_the_repository_api(self, server):
        client = grpcclient.InferenceServerClient(server.url)
        for headers in ({}, {HEADER: KEY}, {ADMIN_HEADER: "guess"}):
            with pytest.raises(InferenceServerException, match=f"expecting header '{ADMIN_HEADER}'"):
                client.get_model_repository_index(headers=headers)
            with pytest.raises(InferenceServerException, match="restricted"):
                client.load_model("absent", headers=headers)
        assert client.get_model_repository_index(headers={ADMIN_HEADER: ADMIN}) is not None
        # Past the access check: the repository answers (it has no such model).
        with pytest.raises(InferenceServerException, match="failed to load 'absent'"):
            client.load_model("absent", headers={ADMIN_HEADER: ADMIN})
        # The access key still guards the rest, and the control key is not it.
        with pytest.raises(InferenceServerException, match=f"expecting header '{HEADER}'"):
            client.get_server_metadata(headers={ADMIN_HEADER: ADMIN})
        assert client.get_server_metadata(headers={HEADER: KEY}).name == "triton"
        client.close()
        assert http(f"{server.http_url}/v2/repository/index", "POST", headers={"segment-key": KEY}) == 403
        assert http(f"{server.http_url}/v2/repository/index", "POST", headers={"segment-admin": ADMIN}) == 200
