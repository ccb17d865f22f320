"""Deployment: the Procfile under honcho scores a submission end to end and stops cleanly; the gateway
serves HTTPS itself with --ssl-certfile/--ssl-keyfile."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from runtime.spec import SPECS_DIR
from tests.conftest import SUBMISSIONS
from tests.live_server import free_port
from tests.waiting import wait_for

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DEMO = SPECS_DIR / "demo.toml"


def answers(url: str, **kwargs) -> bool:
    try:
        return httpx.get(url, timeout=2, **kwargs).status_code == 200
    except httpx.HTTPError:
        return False


def processes_using(folder: Path) -> list[psutil.Process]:
    """Processes whose command line names the folder (the embedded redis-server names its socket)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if str(folder) in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
    return found


def one_study_spec(folder: Path) -> Path:
    """The demo rules (and so its shipped baselines) with one feedback problem of one study."""
    text = DEMO.read_text().replace(
        'problems = ["DT-iris-acc", "lasso-diabetes-mae", "SVM-wine-nll", "RF-iris-acc"]\nstudies = 2',
        'problems = ["DT-iris-acc"]\nstudies = 1',
    )
    assert 'problems = ["DT-iris-acc"]' in text, "demo.toml changed: update this test's spec edit"
    path = folder / "demo.toml"
    path.write_text(text)
    return path


def stop_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.fixture()
def deploy_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("BBO_REDIS_URL", "BBO_SERVER", "BBO_TOKEN")}
    env |= {
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # `bbo` as an installed command
        "BBO_STATE_DIR": str(tmp_path / "state"),
        "BBO_CONFIG_DIR": str(tmp_path / "config"),
    }
    return env


@pytest.mark.skipif(not (BIN / "honcho").exists(), reason="honcho is not installed (pip install -e '.[dev]')")
def test_procfile_under_honcho_scores_a_submission_and_stops_cleanly(tmp_path, deploy_env):
    port = free_port()
    env = deploy_env | {
        "BBO_PORT": str(port),
        "BBO_SPEC": str(one_study_spec(tmp_path)),
        "BBO_BACKEND": "process",
        "BBO_ALLOW_UNSAFE_SANDBOX": "1",
    }
    log = (tmp_path / "honcho.log").open("w")
    honcho = subprocess.Popen(
        [str(BIN / "honcho"), "-f", str(ROOT / "Procfile"), "start"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers(f"{base}/health"), 90, "the gateway's /health", alive=honcho)

        def bbo(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
            done = subprocess.run(["bbo", *args], env=env, capture_output=True, text=True, timeout=timeout)
            assert done.returncode == 0, f"bbo {' '.join(args)}: {done.stderr}"
            return done

        token = json.loads(bbo("admin", "team", "add", "procfilers", "--json").stdout)["token"]
        bbo("login", "--server", base, "--token", token)
        done = bbo("submit", str(SUBMISSIONS / "random_search"), "--wait", "--json", timeout=300)
        scored = json.loads(done.stdout.strip().splitlines()[-1])
        assert scored["state"] == "scored", scored
        assert scored["score"] is not None and scored["progress"]["studies_done"] == 1
        assert processes_using(tmp_path / "state"), "the embedded Redis should be running under the gateway"

        honcho.send_signal(signal.SIGTERM)
        honcho.wait(30)
    finally:
        stop_group(honcho)
        log.close()
    output = (tmp_path / "honcho.log").read_text()
    assert "gateway.1 stopped" in output and "worker.1 stopped" in output, output
    # Nothing outlives honcho: the gateway flushed and stopped the embedded Redis it owned.
    wait_for(lambda: not processes_using(tmp_path / "state"), 10, "the embedded Redis to exit")
    assert (tmp_path / "state" / "redis").is_dir()


def make_self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    try:
        from cryptography import x509  # noqa: F401
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.skip("neither the cryptography package nor the openssl command is available")
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"]
            + ["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"]
            + ["-keyout", str(key), "-out", str(cert)],
            check=True,
            capture_output=True,
        )
        return cert, key
    _cryptography_self_signed(cert, key)
    return cert, key


def _cryptography_self_signed(cert: Path, key: Path) -> None:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def test_serve_speaks_https_with_its_own_certificate(tmp_path, deploy_env):
    cert, key = make_self_signed(tmp_path)
    port = free_port()
    serve = subprocess.Popen(
        ["bbo", "admin", "serve", "--port", str(port), "--log-level", "warning"]
        + ["--ssl-certfile", str(cert), "--ssl-keyfile", str(key)],
        env=deploy_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        trusted = ssl.create_default_context(cafile=str(cert))
        https_health = f"https://127.0.0.1:{port}/health"
        wait_for(lambda: answers(https_health, verify=trusted), 60, "HTTPS /health", alive=serve)
        response = httpx.get(f"https://localhost:{port}/health", verify=trusted, timeout=5)
        assert response.json()["status"] == "ok"
        assert not answers(f"http://127.0.0.1:{port}/health")  # plain HTTP is not served on that port
        with pytest.raises(httpx.ConnectError):  # and an untrusted certificate is refused by clients
            httpx.get(f"https://127.0.0.1:{port}/health", timeout=5)
        serve.send_signal(signal.SIGTERM)
        serve.wait(30)
    finally:
        stop_group(serve)
    assert "https://" in serve.stderr.read()
    # SIGTERM (what process managers send) still lets serve stop the embedded Redis it started.
    wait_for(lambda: not processes_using(tmp_path / "state"), 10, "the embedded Redis to exit")


def test_a_certificate_without_its_key_is_a_usage_error(tmp_path, deploy_env):
    cert = tmp_path / "cert.pem"
    cert.write_text("not used")
    done = subprocess.run(
        ["bbo", "admin", "serve", "--ssl-certfile", str(cert)],
        env=deploy_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--ssl-keyfile" in done.stderr


def test_serve_runs_several_gateway_processes_on_one_port(tmp_path, deploy_env):
    port = free_port()
    serve = subprocess.Popen(
        ["bbo", "admin", "serve", "--port", str(port), "--log-level", "warning", "--workers", "2"],
        env=deploy_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: answers(f"http://127.0.0.1:{port}/health"), 60, "/health", alive=serve)
        gateways = [
            p
            for p in psutil.Process(serve.pid).children(recursive=True)
            if "multiprocessing" in " ".join(p.cmdline())
        ]
        assert len(gateways) >= 2, [p.cmdline() for p in gateways]
        # Every process serves the same competition from the same store.
        infos = {
            httpx.get(f"http://127.0.0.1:{port}/v1/info", timeout=5).json()["spec_hash"] for _ in range(6)
        }
        assert len(infos) == 1
        serve.send_signal(signal.SIGTERM)
        serve.wait(30)
    finally:
        stop_group(serve)
    wait_for(lambda: not processes_using(tmp_path / "state"), 10, "the embedded Redis to exit")
