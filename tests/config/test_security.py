"""Secure connections: validation, secrets that never show, option builders, a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from stocksync.config import ConfigError, Secret, Settings, load_settings
from stocksync.config.connections import (
    faust_broker_credentials,
    kafka_client_options,
    redis_client_options,
    security_summary,
)
from stocksync.config.devsetup import STATE_ENV
from stocksync.daemon.logs import JsonFormatter
from stocksync.daemon.services import free_port
from stocksync.store import RedisStore, StoreUnavailable
from stocksync.store.layout import Keys
from tests.unprivileged import as_unprivileged, open_folder

KAFKA_SECRET = "kafka-pw-7f3a9c"
REDIS_SECRET = "redis-pw-4e1b8d"
ENV = {"STOCKSYNC_KAFKA_PASSWORD": KAFKA_SECRET, "STOCKSYNC_REDIS_PASSWORD": REDIS_SECRET}
REDIS_ENV = {"STOCKSYNC_REDIS_PASSWORD": REDIS_SECRET}
SASL = """
[kafka]
security_protocol = "SASL_PLAINTEXT"
sasl_mechanism = "SCRAM-SHA-256"
username = "svc-stocksync"
"""


@dataclass(frozen=True)
class Tls:
    """A throwaway self-signed certificate (its own CA) and its key, for 127.0.0.1."""

    cert: str
    key: str
    encrypted_key: str | None


def _with_cryptography(folder: Path) -> Tls | None:
    try:
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        return None
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    for file, encryption in (
        ("key.pem", serialization.NoEncryption()),
        ("encrypted.pem", serialization.BestAvailableEncryption(b"passphrase")),
    ):
        (folder / file).write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
            )
        )
    return Tls(str(folder / "cert.pem"), str(folder / "key.pem"), str(folder / "encrypted.pem"))


def _with_openssl(folder: Path) -> Tls | None:
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    cert, key, encrypted = folder / "cert.pem", folder / "key.pem", folder / "encrypted.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    done = subprocess.run(
        [openssl, "pkey", "-in", str(key), "-aes256", "-passout", "pass:passphrase",
         "-out", str(encrypted)],
        check=False, capture_output=True, timeout=30,
    )  # fmt: skip
    return Tls(str(cert), str(key), str(encrypted) if done.returncode == 0 else None)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A self-signed certificate made with cryptography, else openssl; skip without both."""
    folder = tmp_path_factory.mktemp("tls")
    made = _with_cryptography(folder) or _with_openssl(folder)
    if made is None:
        pytest.skip("neither the cryptography package nor openssl is available")
    return made


@dataclass(frozen=True)
class SecuredRedis:
    """A redis-server with ``requirepass`` and an ACL user, with a TLS port when possible."""

    url: str
    tls_url: str | None
    cafile: str | None
    password: str
    user: str
    user_password: str


def _wait_for(port: int, password: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while True:
        if proc.poll() is not None:
            pytest.fail(f"redis-server exited: {log.read_text(errors='replace')[-2000:]}")
        client = redis.Redis(port=port, password=password, socket_timeout=1)
        try:
            with contextlib.closing(client):
                client.ping()
                return
        except (redis.RedisError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture(scope="module")
def secured_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredRedis]:
    """Its own redis-server: the suite's RedisServer probes with an unauthenticated PING."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    folder = tmp_path_factory.mktemp("secured-redis")
    tls = _with_cryptography(folder) or _with_openssl(folder)
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", str(folder), "--requirepass", REDIS_SECRET,
               "--user", "app", "on", ">app-pw-9d2c", "~*", "&*", "+@all"]  # fmt: skip
    tls_port = None
    if tls is not None:
        tls_port = free_port()
        command += ["--tls-port", str(tls_port), "--tls-cert-file", tls.cert,
                    "--tls-key-file", tls.key, "--tls-ca-cert-file", tls.cert,
                    "--tls-auth-clients", "no"]  # fmt: skip
    log = folder / "redis.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=folder)
    try:
        _wait_for(port, REDIS_SECRET, proc, log)
        yield SecuredRedis(
            url=f"redis://127.0.0.1:{port}/0",
            tls_url=None if tls_port is None else f"rediss://127.0.0.1:{tls_port}/0",
            cafile=None if tls is None else tls.cert,
            password=REDIS_SECRET,
            user="app",
            user_password="app-pw-9d2c",
        )
    finally:
        proc.terminate()
        proc.wait(10)


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Settings:
    path = tmp_path / "stocksync.toml"
    path.write_text(text, encoding="utf-8")
    return load_settings(str(path), env or {})


def refused_text(path: str) -> str:
    """The message of the ConfigError that loading ``path`` raises."""
    try:
        load_settings(path, {})
    except ConfigError as exc:
        return str(exc)
    raise AssertionError(f"{path} loaded")


def refused(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, env)
    message = str(caught.value)
    for secret in (KAFKA_SECRET, REDIS_SECRET, "inline-secret"):
        assert secret not in message
    assert "\n" not in message
    return message


# --- defaults -----------------------------------------------------------------------------


def test_plaintext_defaults_add_no_options() -> None:
    settings = load_settings(None, {})
    assert settings == Settings()
    assert kafka_client_options(settings) == {}
    assert faust_broker_credentials(settings) is None
    assert redis_client_options(settings) == {}


def test_plaintext_faust_app_is_unchanged() -> None:
    from stocksync.agents.app import create_app

    assert create_app(Settings()).conf.broker_credentials is None


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ('[kafka]\nsecurity_protocol = "SASL_SSL"\nusername = "u"\n', ENV,
         "kafka.sasl_mechanism is missing: security_protocol = 'SASL_SSL' needs one of"),
        ('[kafka]\nsecurity_protocol = "SASL_PLAINTEXT"\nsasl_mechanism = "PLAIN"\n', ENV,
         "kafka.username is missing"),
        (SASL, {}, "kafka.password_file is missing: security_protocol = 'SASL_PLAINTEXT' needs"
         " a password; set STOCKSYNC_KAFKA_PASSWORD"),
        (SASL, {"STOCKSYNC_KAFKA_PASSWORD": ""}, "STOCKSYNC_KAFKA_PASSWORD is set but empty"),
        (SASL + 'password_file = "absent.txt"\n', {},
         "kafka.password_file = 'absent.txt' is invalid: the file does not exist"),
        (SASL + 'password_file = "."\n', {},
         "kafka.password_file = '.' is invalid: it is a directory"),
        (SASL + 'password_file = "empty.txt"\n', {},
         "kafka.password_file = 'empty.txt' is invalid: the file is empty"),
        ('[kafka]\nsasl_mechanism = "PLAIN"\n', {},
         "kafka.sasl_mechanism = 'PLAIN' is invalid: security_protocol = 'PLAINTEXT' does not"
         " authenticate"),
        ('[kafka]\nsecurity_protocol = "SSL"\nusername = "u"\n', {},
         "kafka.username = 'u' is invalid: security_protocol = 'SSL' does not authenticate"),
        ("", {"STOCKSYNC_KAFKA_PASSWORD": KAFKA_SECRET},
         "STOCKSYNC_KAFKA_PASSWORD is set but kafka.security_protocol = 'PLAINTEXT'"),
        ('[kafka]\nsasl_mechanism = "GSSAPI"\n', {},
         "kafka.sasl_mechanism = 'GSSAPI' is invalid: expected one of 'PLAIN', 'SCRAM-SHA-256',"),
        ('[kafka]\nsecurity_protocol = "TLS"\n', {}, "kafka.security_protocol = 'TLS'"),
        (SASL + 'ssl_cafile = "ca.pem"\n', ENV,
         "kafka.ssl_cafile = 'ca.pem' is invalid: security_protocol = 'SASL_PLAINTEXT' does not"
         " use TLS"),
        ("[kafka]\nssl_check_hostname = false\n", {}, "kafka.ssl_check_hostname = False"),
        ('[kafka]\nsecurity_protocol = "SSL"\nssl_cafile = "absent.pem"\n', {},
         "kafka.ssl_cafile = 'absent.pem' is invalid: the file does not exist"),
        ('[kafka]\nsecurity_protocol = "SSL"\nssl_cafile = "empty.txt"\n', {},
         "kafka.ssl_cafile = 'empty.txt' is invalid: it holds no PEM certificate"),
        ('[kafka]\nsecurity_protocol = "SSL"\nssl_keyfile = "empty.txt"\n', {},
         "kafka.ssl_keyfile = 'empty.txt' is invalid: a client key needs its certificate"),
        ('[kafka]\npassword = "inline-secret"\n', {},
         "kafka.password is not a setting: a password never goes in the configuration file"),
        ('[redis]\npassword = "inline-secret"\n', {}, "redis.password is not a setting"),
        ('[redis]\nssl_cafile = "ca.pem"\n', {},
         "redis.ssl_cafile = 'ca.pem' is invalid: redis_url does not use TLS; use a rediss://"),
        ('[redis]\nusername = "app"\n', {},
         "redis.username = 'app' is invalid: a Redis user needs a password"),
        ('redis_url = "redis://:inline-secret@cache:6379/0"\n', REDIS_ENV,
         "redis_url has a password and STOCKSYNC_REDIS_PASSWORD gives one too"),
        ('redis_url = "redis://app:inline-secret@cache:6379/0"\n[redis]\nusername = "x"\n', {},
         "redis.username = 'x' and the user in redis_url both name a Redis user"),
        ('redis_url = "redis://:inline-secret@cache:port/0"\n', {},
         "redis_url = 'redis://:***@cache:port/0' is invalid: the port is not a number"),
        ('[redis]\npassword_file = ""\n', {},
         "redis.password_file = '' is invalid: expected the path of a file"),
    ],
)  # fmt: skip
def test_invalid_security_names_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, env: dict[str, str], expected: str
) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths in the cases are under tmp_path
    (tmp_path / "empty.txt").write_text("")
    assert expected in refused(tmp_path, text, env)


def test_unreadable_password_file_is_refused() -> None:
    with open_folder() as folder:
        secret = folder / "pw"
        secret.write_text(KAFKA_SECRET)
        secret.chmod(0)
        config = folder / "c.toml"
        config.write_text(SASL + f'password_file = "{secret}"\n')
        config.chmod(0o644)  # anyone reads the configuration; nobody reads the password file
        # Root would read the password file: check as a user whom its mode applies to.
        message = as_unprivileged(lambda: refused_text(str(config)))
    assert f"kafka.password_file = '{secret}' is invalid: the file cannot be read" in message


def test_encrypted_client_key_is_refused(tmp_path: Path, tls: Tls) -> None:
    if tls.encrypted_key is None:
        pytest.skip("could not make an encrypted key")
    text = (
        f'[kafka]\nsecurity_protocol = "SSL"\nssl_certfile = "{tls.cert}"\n'
        f'ssl_keyfile = "{tls.encrypted_key}"\n'
    )
    assert "the private key is encrypted" in refused(tmp_path, text)


def test_password_from_file_or_env_and_env_wins(tmp_path: Path) -> None:
    file = tmp_path / "kafka.pw"
    file.write_text("from-the-file\n")  # the trailing line break is not part of it
    text = SASL + f'password_file = "{file}"\n'
    from_file = load(tmp_path, text).kafka.password
    assert from_file is not None
    assert from_file.reveal() == "from-the-file"
    assert from_file.source == f"kafka.password_file {file}"
    from_env = load(tmp_path, text, ENV).kafka.password
    assert from_env is not None
    assert (from_env.reveal(), from_env.source) == (KAFKA_SECRET, "STOCKSYNC_KAFKA_PASSWORD")
    redis_password = load(tmp_path, "", REDIS_ENV).redis.password
    assert redis_password == Secret(REDIS_SECRET, "anywhere")


# --- secrets never show -------------------------------------------------------------------


def test_secrets_are_not_in_repr_or_json(tmp_path: Path) -> None:
    settings = load(tmp_path, SASL, ENV)
    for shown in (repr(settings), str(settings), f"{settings}", repr(security_summary(settings))):
        assert KAFKA_SECRET not in shown
        assert REDIS_SECRET not in shown
    assert "password=***" in repr(settings.kafka)
    assert str(settings.redis.password) == "***"
    with pytest.raises(TypeError):
        msgspec.json.encode(settings)  # a Secret is never serialized by accident


def run_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith("STOCKSYNC_") or k == STATE_ENV
    }
    return subprocess.run(
        [sys.executable, "-m", "stocksync", *args],
        cwd=tmp_path,
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_config_shows_the_mode_never_the_password(tmp_path: Path) -> None:
    config = tmp_path / "stocksync.toml"
    config.write_text(SASL + '[redis]\nusername = "app"\n')
    done = run_cli(tmp_path, "--config", str(config), "check-config", **ENV)
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert KAFKA_SECRET not in output
    assert REDIS_SECRET not in output
    assert (
        "kafka security: SASL_PLAINTEXT; SASL SCRAM-SHA-256 as 'svc-stocksync', password set"
        " (from STOCKSYNC_KAFKA_PASSWORD); no TLS" in done.stdout
    )
    assert (
        "redis security: user 'app', password set (from STOCKSYNC_REDIS_PASSWORD); no TLS"
        in done.stdout
    )
    assert "warning" not in done.stdout


def test_check_config_warns_of_a_password_in_redis_url(tmp_path: Path) -> None:
    url = f"rediss://app:{REDIS_SECRET}@cache:6380/0"
    done = run_cli(tmp_path, "check-config", STOCKSYNC_REDIS_URL=url)
    assert done.returncode == 0, done.stderr
    assert REDIS_SECRET not in done.stdout + done.stderr
    assert "redis security: user 'app', password in redis_url; TLS with CA of the system" in (
        done.stdout
    )
    assert "warning: redis_url carries a password" in done.stdout


def test_operator_command_logs_no_password(tmp_path: Path) -> None:
    config = tmp_path / "stocksync.toml"
    config.write_text(f'broker = "127.0.0.1:{free_port()}"\n' + SASL)
    done = run_cli(tmp_path, "--log-level", "debug", "--config", str(config), "dlq", "list", **ENV)
    assert done.returncode != 0  # nothing listens there
    assert done.stderr.strip()  # it did log, and say why it failed
    assert KAFKA_SECRET not in done.stdout + done.stderr
    assert REDIS_SECRET not in done.stdout + done.stderr


def test_client_logs_carry_no_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, secured_redis: SecuredRedis
) -> None:
    from stocksync.daemon.worker import WorkerError, _connect_redis

    wrong = "wrong-but-secret-5c0e"  # Redis refuses it, and the refusal is logged
    env = {"STOCKSYNC_KAFKA_PASSWORD": KAFKA_SECRET, "STOCKSYNC_REDIS_PASSWORD": wrong}
    settings = load(tmp_path, f'redis_url = "{secured_redis.url}"\n' + SASL, env)

    async def main() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=f"127.0.0.1:{free_port()}", **kafka_client_options(settings)
        )
        with pytest.raises(KafkaConnectionError):
            await producer.start()
        await producer.stop()
        with pytest.raises(WorkerError) as caught:
            await _connect_redis(settings, timeout=0.3)
        assert wrong not in str(caught.value)

    with caplog.at_level(logging.DEBUG):
        asyncio.run(main())
        logging.getLogger("stocksync.test").info("settings: %r", settings)
    assert any("waiting for Redis" in r.getMessage() for r in caplog.records)
    formatter = JsonFormatter()
    lines = "\n".join(formatter.format(record) for record in caplog.records)
    assert KAFKA_SECRET not in lines
    assert wrong not in lines


# --- option builders ----------------------------------------------------------------------


def sasl_ssl(tmp_path: Path, tls: Tls, extra: str = "") -> Settings:
    text = (
        '[kafka]\nsecurity_protocol = "SASL_SSL"\nsasl_mechanism = "SCRAM-SHA-512"\n'
        f'username = "svc"\nssl_cafile = "{tls.cert}"\nssl_certfile = "{tls.cert}"\n'
        f'ssl_keyfile = "{tls.key}"\n{extra}'
    )
    return load(tmp_path, text, {"STOCKSYNC_KAFKA_PASSWORD": KAFKA_SECRET})


def test_kafka_sasl_ssl_options(tmp_path: Path, tls: Tls) -> None:
    options = kafka_client_options(sasl_ssl(tmp_path, tls))
    context = options.pop("ssl_context")
    assert options == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "svc",
        "sasl_plain_password": KAFKA_SECRET,
    }
    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED
    subjects = [dict(part[0] for part in ca["subject"]) for ca in context.get_ca_certs()]
    assert {"commonName": "localhost"} in subjects  # our CA, not only the system's

    relaxed = kafka_client_options(sasl_ssl(tmp_path, tls, "ssl_check_hostname = false\n"))
    assert not relaxed["ssl_context"].check_hostname
    assert relaxed["ssl_context"].verify_mode == ssl.CERT_REQUIRED


def test_kafka_ssl_and_sasl_plaintext_options(tmp_path: Path, tls: Tls) -> None:
    ssl_only = load(tmp_path, f'[kafka]\nsecurity_protocol = "SSL"\nssl_cafile = "{tls.cert}"\n')
    options = kafka_client_options(ssl_only)
    assert sorted(options) == ["security_protocol", "ssl_context"]
    assert options["security_protocol"] == "SSL"
    assert kafka_client_options(load(tmp_path, SASL, ENV)) == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "svc-stocksync",
        "sasl_plain_password": KAFKA_SECRET,
    }


def test_faust_credentials_match_the_aiokafka_options(tmp_path: Path, tls: Tls) -> None:
    import faust
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from stocksync.agents.app import create_app

    for settings in (
        sasl_ssl(tmp_path, tls),
        load(tmp_path, SASL, ENV),
        load(tmp_path, f'[kafka]\nsecurity_protocol = "SSL"\nssl_cafile = "{tls.cert}"\n'),
    ):
        credentials = faust_broker_credentials(settings)
        assert isinstance(credentials, faust.SASLCredentials | faust.SSLCredentials)
        assert KAFKA_SECRET not in repr(credentials)
        faust_options = dict(credentials_to_aiokafka_auth(credentials))
        ours = kafka_client_options(settings)
        assert faust_options.pop("ssl_context") is not None or "ssl_context" not in ours
        ours.pop("ssl_context", None)
        assert faust_options == ours
        assert type(create_app(settings).conf.broker_credentials) is type(credentials)


def test_redis_options(tmp_path: Path, tls: Tls) -> None:
    assert redis_client_options(load(tmp_path, "", REDIS_ENV)) == {"password": REDIS_SECRET}
    text = (
        'redis_url = "rediss://cache:6380/0"\n[redis]\nusername = "app"\n'
        f'ssl_cafile = "{tls.cert}"\nssl_certfile = "{tls.cert}"\nssl_keyfile = "{tls.key}"\n'
        "ssl_check_hostname = false\n"
    )
    assert redis_client_options(load(tmp_path, text, REDIS_ENV)) == {
        "username": "app",
        "password": REDIS_SECRET,
        "ssl_ca_certs": tls.cert,
        "ssl_certfile": tls.cert,
        "ssl_keyfile": tls.key,
        "ssl_check_hostname": False,
    }
    assert redis_client_options(load(tmp_path, 'redis_url = "rediss://cache:6380/0"\n')) == {
        "ssl_check_hostname": True
    }


# --- a real redis-server with a password --------------------------------------------------


async def _pings(url: str, options: Mapping[str, Any] | None) -> bool:
    store = RedisStore.from_url(url, Keys("t"), client_options=options)
    try:
        await store.ping()
    except StoreUnavailable:
        return False
    finally:
        await store.close()
    return True


def test_redis_store_needs_the_resolved_password(
    tmp_path: Path, secured_redis: SecuredRedis
) -> None:
    url = secured_redis.url
    good = load(tmp_path, f'redis_url = "{url}"\n', REDIS_ENV)
    wrong = load(tmp_path, f'redis_url = "{url}"\n', {"STOCKSYNC_REDIS_PASSWORD": "nope"})
    assert asyncio.run(_pings(url, redis_client_options(good)))
    assert not asyncio.run(_pings(url, None))
    assert not asyncio.run(_pings(url, redis_client_options(wrong)))


def test_redis_acl_user_from_settings(tmp_path: Path, secured_redis: SecuredRedis) -> None:
    text = f'redis_url = "{secured_redis.url}"\n[redis]\nusername = "app"\n'
    env = {"STOCKSYNC_REDIS_PASSWORD": secured_redis.user_password}
    assert asyncio.run(_pings(secured_redis.url, redis_client_options(load(tmp_path, text, env))))


def test_operator_client_over_tls(tmp_path: Path, secured_redis: SecuredRedis) -> None:
    from stocksync.ops.access import open_store

    if secured_redis.tls_url is None:
        pytest.skip("no certificate for a TLS port")
    text = (
        f'redis_url = "{secured_redis.tls_url}"\n[redis]\nssl_cafile = "{secured_redis.cafile}"\n'
    )
    untrusted = f'redis_url = "{secured_redis.tls_url}"\n'

    async def ping(settings: Settings) -> bool:
        store = open_store(settings)
        try:
            return bool(await store.client.ping())
        finally:
            await store.close()

    assert asyncio.run(ping(load(tmp_path, text, REDIS_ENV)))
    with pytest.raises(redis.ConnectionError):  # the system's CAs do not know our certificate
        asyncio.run(ping(load(tmp_path, untrusted, REDIS_ENV)))


def test_every_kafka_client_takes_the_options(tmp_path: Path, tls: Tls) -> None:
    from stocksync.agents.topics import BrokerUnavailable, ensure_topics
    from stocksync.ops.access import kafka_options

    settings = sasl_ssl(tmp_path, tls)
    assert kafka_options(settings)["sasl_plain_password"] == KAFKA_SECRET
    with pytest.raises(BrokerUnavailable):  # aiokafka accepted the options, then found no one
        asyncio.run(ensure_topics(f"127.0.0.1:{free_port()}", settings, timeout=5))


def test_dev_refuses_secured_connections(tmp_path: Path) -> None:
    config = tmp_path / "stocksync.toml"
    config.write_text(SASL)
    done = run_cli(tmp_path, "--config", str(config), "dev", "--no-demo", **ENV)
    assert done.returncode == 2
    assert "runs a local plaintext broker and uses a plaintext Redis" in done.stderr
    assert KAFKA_SECRET not in done.stdout + done.stderr
