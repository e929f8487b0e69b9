"""The ``stocksync`` command line: exit codes, messages, schema output, help, dispatch."""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import subprocess
import sys
import tomllib
import types
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema_rs
import msgspec
import pytest

from stocksync.cli import configuration
from stocksync.cli import main as cli
from stocksync.codecs.events import Event
from stocksync.config import Settings
from stocksync.config.devsetup import STATE_ENV as DEV_STATE

SUBCOMMANDS = [
    ["check-config"],
    ["schema"],
    ["hash-token"],
    ["worker"],
    ["api"],
    ["dev"],
    ["dlq"],
    ["dlq", "list"],
    ["dlq", "replay"],
    ["rebuild"],
    ["reconcile"],
]
# Every subcommand that loads the configuration, with the arguments it needs.
CONFIGURED = [
    ["check-config"],
    ["worker"],
    ["api", "--processes", "2"],
    ["dev", "--no-demo"],
    ["dlq", "list"],
    ["dlq", "replay", "--dry-run"],
    ["rebuild", "--yes"],
    ["reconcile", "counts.csv"],
]
SAMPLE_EVENT = {
    "type": "stock.snapshot",
    "schema": 1,
    "event_id": "erp-1",
    "occurred_at": "2026-11-27T09:00:00Z",
    "source": "erp",
    "sku": "TSHIRT-RED-M",
    "node": "dc-east",
    "on_hand": 120,
    "as_of": "2026-11-27T09:00:00Z",
}


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKSYNC_") or k == DEV_STATE}
    return env | extra


def stocksync(
    *args: str, cwd: Path, stdin: str = "", **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m stocksync ARGS`` with only the given STOCKSYNC_* variables."""
    return subprocess.run(
        [sys.executable, "-m", "stocksync", *args],
        cwd=cwd,
        env=clean_env(**env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def write_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "stocksync.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


# --- check-config -----------------------------------------------------------------------


def test_check_config_defaults(tmp_path: Path) -> None:
    done = stocksync("check-config", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    for part in [
        "configuration is valid",
        "built-in defaults",
        "kafka://127.0.0.1:9092",
        "redis://127.0.0.1:6379/0",
        "stocksync.stock.v1",
        "stocksync.dlq",
        "channel web:",
        "dc-east, dc-west",
        "no tokens",
    ]:
        assert part in done.stdout


@pytest.mark.parametrize("where", ["before", "after", "env"])
def test_check_config_reads_file(tmp_path: Path, where: str) -> None:
    path = write_config(
        tmp_path,
        '[[channels]]\nname = "b2b"\nnodes = ["dc-north"]\n[nodes.dc-north]\nsafety_stock = 4\n',
    )
    args = {
        "before": ["--config", path, "check-config"],
        "after": ["check-config", "--config", path],
        "env": ["check-config"],
    }[where]
    env = {"STOCKSYNC_CONFIG": path} if where == "env" else {}
    done = stocksync(*args, cwd=tmp_path, **env)
    assert done.returncode == 0, done.stderr
    assert path in done.stdout
    assert "channel b2b:" in done.stdout
    assert "dc-north (safety stock 4)" in done.stdout


def test_check_config_names_overriding_variables(tmp_path: Path) -> None:
    done = stocksync(
        "check-config", cwd=tmp_path, STOCKSYNC_API_PORT="9100", STOCKSYNC_TOPIC_PREFIX="eu"
    )
    assert done.returncode == 0, done.stderr
    assert "127.0.0.1:9100" in done.stdout
    assert "eu.orders.v1" in done.stdout
    assert "STOCKSYNC_API_PORT" in done.stdout


def test_check_config_hides_secrets(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"s3cret-token-value").hexdigest()
    path = write_config(tmp_path, f'[[api.tokens]]\nname = "shop"\nsha256 = "{digest}"\n')
    done = stocksync(
        "--config",
        path,
        "check-config",
        cwd=tmp_path,
        STOCKSYNC_REDIS_URL="redis://app:hunter2@cache:6379/1",
    )
    assert done.returncode == 0, done.stderr
    assert "1 token(s): shop" in done.stdout
    assert digest not in done.stdout
    assert "hunter2" not in done.stdout
    assert "redis://app:***@cache:6379/1" in done.stdout


@pytest.mark.parametrize(
    ("text", "env", "parts"),
    [
        ("[api]\nport = 70000\n", {}, ["api.port", "70000"]),
        (
            '[[channels]]\nname = "web"\nnodes = ["a"]\n'
            '[[channels]]\nname = "b2b"\nnodes = ["a"]\nlow_stock_threshold = -1\n',
            {},
            ["channels[1].low_stock_threshold", "-1"],
        ),
        ("[api]\nport = 8080\nhost =\n", {}, ["not valid TOML", "line 3"]),
        ("", {"STOCKSYNC_API_PORT": "eighty"}, ["STOCKSYNC_API_PORT", "'eighty'"]),
        ("", {"STOCKSYNC_REDIS_URL": "http://r"}, ["STOCKSYNC_REDIS_URL", "'http://r'"]),
    ],
)
def test_check_config_bad_configuration(
    tmp_path: Path, text: str, env: dict[str, str], parts: list[str]
) -> None:
    path = write_config(tmp_path, text)
    done = stocksync("--config", path, "check-config", cwd=tmp_path, **env)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("stocksync: configuration error: ")
    assert done.stderr.count("\n") == 1, done.stderr
    for part in parts:
        assert part in done.stderr


def test_check_config_missing_file(tmp_path: Path) -> None:
    done = stocksync("check-config", cwd=tmp_path, STOCKSYNC_CONFIG=str(tmp_path / "nope.toml"))
    assert done.returncode == 2
    assert "nope.toml' (from STOCKSYNC_CONFIG) does not exist" in done.stderr


@pytest.mark.parametrize("args", CONFIGURED, ids=" ".join)
def test_every_configured_command_refuses_bad_configuration(
    tmp_path: Path, args: list[str]
) -> None:
    done = stocksync(*args, cwd=tmp_path, STOCKSYNC_WORKER_PORT="99999")
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        "stocksync: configuration error: STOCKSYNC_WORKER_PORT = '99999' is invalid: expected"
        " an integer from 0 to 65535; set STOCKSYNC_WORKER_PORT to a valid value or unset it\n"
    )
    assert done.stdout == ""


# --- schema -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def schema(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    done = stocksync("schema", cwd=tmp_path_factory.mktemp("schema"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("{\n  ")  # indented
    loaded: dict[str, Any] = json.loads(done.stdout)
    return loaded


def test_schema_does_not_need_a_valid_configuration(tmp_path: Path) -> None:
    done = stocksync("schema", cwd=tmp_path, STOCKSYNC_API_PORT="bad")
    assert done.returncode == 0
    json.loads(done.stdout)


def test_schema_accepts_sample_event(schema: dict[str, Any]) -> None:
    msgspec.convert(SAMPLE_EVENT, Event)  # the sample is valid by our own decoder too
    validator = jsonschema_rs.validator_for(schema)
    assert validator.is_valid(SAMPLE_EVENT)
    assert validator.is_valid([SAMPLE_EVENT, SAMPLE_EVENT | {"event_id": "erp-2"}])


@pytest.mark.parametrize(
    "change",
    [
        {"on_hand": -1},
        {"schema": 2},
        {"type": "stock.teleported"},
        {"sku": "has space"},
    ],
)
def test_schema_rejects_invalid_event(schema: dict[str, Any], change: dict[str, Any]) -> None:
    assert not jsonschema_rs.validator_for(schema).is_valid(SAMPLE_EVENT | change)


def test_schema_rejects_empty_bulk(schema: dict[str, Any]) -> None:
    assert not jsonschema_rs.validator_for(schema).is_valid([])


# --- help ---------------------------------------------------------------------------------


@pytest.mark.parametrize("args", SUBCOMMANDS, ids=" ".join)
def test_help_for_every_subcommand(tmp_path: Path, args: list[str]) -> None:
    done = stocksync(*args, "--help", cwd=tmp_path, STOCKSYNC_API_PORT="bad")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: stocksync {' '.join(args)}")
    assert "--config" in done.stdout


def test_top_level_help_lists_commands_and_variables(tmp_path: Path) -> None:
    done = stocksync("--help", cwd=tmp_path)
    assert done.returncode == 0
    for name in ["check-config", "hash-token", "reconcile", "STOCKSYNC_BROKER", "exit status"]:
        assert name in done.stdout


def test_no_command_is_a_usage_error(tmp_path: Path) -> None:
    done = stocksync(cwd=tmp_path)
    assert done.returncode == 2
    assert "usage: stocksync" in done.stderr


def test_unknown_command_is_a_usage_error(tmp_path: Path) -> None:
    done = stocksync("frobnicate", cwd=tmp_path)
    assert done.returncode == 2
    assert "invalid choice" in done.stderr


# --- hash-token -----------------------------------------------------------------------------


def test_hash_token_from_stdin_configures_a_token(tmp_path: Path) -> None:
    secret = "Zk3q-8f0Lr2Wc9Yt1VbNm4Xs"
    done = stocksync("hash-token", "--name", "shop", cwd=tmp_path, stdin=secret + "\n")
    assert done.returncode == 0, done.stderr
    assert secret not in done.stdout + done.stderr
    entry = tomllib.loads(done.stdout)["api"]["tokens"][0]
    assert entry == {
        "name": "shop",
        "sha256": hashlib.sha256(secret.encode()).hexdigest(),
        "scopes": ["availability:read"],
    }
    path = write_config(tmp_path, done.stdout)
    checked = stocksync("--config", path, "check-config", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "1 token(s): shop" in checked.stdout


def test_hash_token_generate_prints_secret_once_on_stderr(tmp_path: Path) -> None:
    done = stocksync("hash-token", "--generate", "--scope", "admin", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    secret = done.stderr.rsplit(": ", 1)[1].strip()
    assert len(secret) >= 32
    assert secret not in done.stdout
    entry = tomllib.loads(done.stdout)["api"]["tokens"][0]
    assert entry["sha256"] == hashlib.sha256(secret.encode()).hexdigest()
    assert entry["scopes"] == ["admin"]
    again = stocksync("hash-token", "--generate", cwd=tmp_path)
    assert again.stderr != done.stderr  # random each time


def test_hash_token_warns_about_short_secret(tmp_path: Path) -> None:
    done = stocksync("hash-token", cwd=tmp_path, stdin="abc")
    assert done.returncode == 0
    assert "short" in done.stderr


@pytest.mark.parametrize(
    ("stdin", "args", "message"),
    [
        ("", [], "empty"),
        ("two words here", [], "without spaces"),
        ("x" * 40, ["--name", "n" * 65], "--name"),
        ("x" * 40, ["--name", "a\tb"], "control characters"),
    ],
)
def test_hash_token_refuses(tmp_path: Path, stdin: str, args: list[str], message: str) -> None:
    done = stocksync("hash-token", *args, cwd=tmp_path, stdin=stdin)
    assert done.returncode == 2
    assert done.stdout == ""
    assert message in done.stderr


def test_token_sha256_is_lowercase_hex_of_utf8() -> None:
    assert configuration.token_sha256("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


# --- dispatch (in process, with stand-in modules) -------------------------------------------


@pytest.fixture
def calls(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[list[tuple[str, tuple[Any, ...], dict[str, Any]]]]:
    """Stand-in service modules that record how they were called."""
    monkeypatch.setattr(cli, "setup_logging", lambda level, fmt: None)
    for name in list(os.environ):
        if name.startswith("STOCKSYNC_") and name != DEV_STATE:
            monkeypatch.delenv(name)
    recorded: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def recorder(label: str, result: int = 0) -> Any:
        def run(*args: Any, **kwargs: Any) -> int:
            recorded.append((label, args, kwargs))
            return result

        return run

    worker = types.ModuleType("stocksync.daemon.worker")
    worker.run = recorder("worker", 3)  # type: ignore[attr-defined]
    server = types.ModuleType("stocksync.api.server")
    server.run = recorder("api")  # type: ignore[attr-defined]
    dev = types.ModuleType("stocksync.daemon.dev")
    dev.run = recorder("dev")  # type: ignore[attr-defined]
    operate = types.ModuleType("stocksync.ops.commands")
    for function in ["dlq_list", "dlq_replay", "rebuild", "reconcile"]:
        setattr(operate, function, recorder(function))
    for module in [worker, server, dev, operate]:
        monkeypatch.setitem(sys.modules, module.__name__, module)
    yield recorded


def test_worker_gets_settings_and_its_exit_code_is_returned(calls: list[Any]) -> None:
    assert cli.main(["worker"]) == 3
    ((label, args, kwargs),) = calls
    assert (label, args, kwargs) == ("worker", (Settings(),), {})


def test_api_processes(calls: list[Any]) -> None:
    assert cli.main(["api", "--processes", "4"]) == 0
    assert calls == [("api", (Settings(),), {"processes": 4})]


def test_api_processes_default(calls: list[Any]) -> None:
    assert cli.main(["api"]) == 0
    assert calls == [("api", (Settings(),), {"processes": 1})]


_DEV_DEFAULTS = {"demo": True, "config": None, "keep": False, "status": True, "log_format": None}


@pytest.mark.parametrize(
    ("args", "options"),
    [
        (["dev"], {}),
        (["dev", "--no-demo"], {"demo": False}),
        (["dev", "--keep", "--quiet"], {"keep": True, "status": False}),
        (["dev", "--no-status", "--log-format", "json"], {"status": False, "log_format": "json"}),
    ],
)
def test_dev_options(calls: list[Any], args: list[str], options: dict[str, Any]) -> None:
    assert cli.main(args) == 0
    assert calls == [("dev", (Settings(),), _DEV_DEFAULTS | options)]


def test_dev_passes_the_file_on_to_its_children(calls: list[Any], tmp_path: Path) -> None:
    path = write_config(tmp_path, "partitions = 5\n")
    assert cli.main(["dev", "--config", path]) == 0
    ((_, (settings,), kwargs),) = calls
    assert (settings.partitions, kwargs) == (5, _DEV_DEFAULTS | {"config": path})


def test_config_file_reaches_the_service(calls: list[Any], tmp_path: Path) -> None:
    path = write_config(tmp_path, "partitions = 5\n")
    assert cli.main(["worker", "--config", path]) == 3
    assert calls[0][1][0].partitions == 5


def operate_args(calls: list[Any], label: str) -> argparse.Namespace:
    ((called, (settings, args), kwargs),) = calls
    assert (called, settings, kwargs) == (label, Settings(), {})
    assert isinstance(args, argparse.Namespace)
    return args


def test_dlq_list(calls: list[Any]) -> None:
    assert cli.main(["dlq", "list", "--reason", "invalid_field", "--limit", "20"]) == 0
    args = operate_args(calls, "dlq_list")
    assert (args.reason, args.limit) == ("invalid_field", 20)


def test_dlq_replay_defaults(calls: list[Any]) -> None:
    assert cli.main(["dlq", "replay"]) == 0
    args = operate_args(calls, "dlq_replay")
    assert (args.reason, args.since, args.dry_run, args.limit) == (None, None, False, None)


@pytest.mark.parametrize(
    ("since", "expected"),
    [
        ("2026-11-27T09:00:00Z", datetime(2026, 11, 27, 9, tzinfo=UTC)),
        ("2026-11-27T10:00:00+01:00", datetime(2026, 11, 27, 9, tzinfo=UTC)),
    ],
)
def test_dlq_replay_since_time(calls: list[Any], since: str, expected: datetime) -> None:
    assert cli.main(["dlq", "replay", "--since", since, "--dry-run", "--limit", "5"]) == 0
    args = operate_args(calls, "dlq_replay")
    assert (args.since, args.dry_run, args.limit) == (expected, True, 5)


def test_dlq_replay_since_age(calls: list[Any]) -> None:
    assert cli.main(["dlq", "replay", "--since", "2h"]) == 0
    since = operate_args(calls, "dlq_replay").since
    assert abs(datetime.now(UTC) - timedelta(hours=2) - since) < timedelta(minutes=1)


@pytest.mark.parametrize("since", ["yesterday", "2026-11-27T09:00:00", "2w", "-2h"])
def test_dlq_replay_bad_since(calls: list[Any], since: str) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["dlq", "replay", "--since", since])
    assert caught.value.code == 2
    assert calls == []


@pytest.mark.parametrize("limit", ["0", "-1", "ten"])
def test_bad_limit(calls: list[Any], limit: str) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["dlq", "list", "--limit", limit])
    assert caught.value.code == 2


def test_dlq_without_action(calls: list[Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["dlq"]) == 2
    assert "choose an action" in capsys.readouterr().err
    assert calls == []


@pytest.mark.parametrize(("args", "yes"), [(["rebuild"], False), (["rebuild", "--yes"], True)])
def test_rebuild(calls: list[Any], args: list[str], yes: bool) -> None:
    assert cli.main(args) == 0
    assert operate_args(calls, "rebuild").yes is yes


def test_reconcile(calls: list[Any]) -> None:
    assert cli.main(["reconcile", "count.csv", "--apply", "--export", "diff.csv"]) == 0
    args = operate_args(calls, "reconcile")
    assert (args.file, args.apply, args.export) == ("count.csv", True, "diff.csv")


def test_reconcile_needs_file(calls: list[Any]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["reconcile"])
    assert caught.value.code == 2


@pytest.mark.parametrize(
    ("args", "module"),
    [
        (["worker"], "stocksync.daemon.worker"),
        (["api"], "stocksync.api.server"),
        (["dev"], "stocksync.daemon.dev"),
        (["dlq", "list"], "stocksync.ops.commands"),
        (["rebuild"], "stocksync.ops.commands"),
    ],
)
def test_missing_module_is_a_broken_install(
    calls: list[Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    module: str,
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes the import fail
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"stocksync {' '.join(args)}: cannot load {module}.")
    assert err.endswith("reinstall stocksync\n")


def test_module_without_the_function_is_a_broken_install(
    calls: list[Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "stocksync.ops.commands", types.ModuleType("operate"))
    assert cli.main(["reconcile", "f.csv"]) == 1
    err = capsys.readouterr().err
    assert "stocksync reconcile: cannot load stocksync.ops.commands.reconcile" in err


def test_broken_dependency_is_reported_not_hidden(
    calls: list[Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def failing_import(name: str) -> Any:
        raise ModuleNotFoundError("No module named 'faust'", name="faust")

    monkeypatch.setattr(importlib, "import_module", failing_import)
    assert cli.main(["worker"]) == 1
    err = capsys.readouterr().err
    assert "cannot load stocksync.daemon.worker.run (No module named 'faust')" in err


def test_keyboard_interrupt_exits_130_quietly(
    calls: list[Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(sys.modules["stocksync.daemon.worker"], "run", interrupted)
    assert cli.main(["worker"]) == 130
    captured = capsys.readouterr()
    assert captured.out == captured.err == ""


def test_log_level_is_passed_to_logging_setup(
    calls: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    levels: list[str] = []
    monkeypatch.setattr(cli, "setup_logging", lambda level, fmt: levels.append(level))
    cli.main(["--log-level", "DEBUG", "worker"])
    cli.main(["worker", "--log-level", "warning"])
    cli.main(["worker"])
    assert levels == ["debug", "warning", "info"]


def test_dlq_reason_must_be_a_known_one(tmp_path: Path) -> None:
    done = stocksync("dlq", "list", "--reason", "nonsense", cwd=tmp_path)
    assert done.returncode == 2
    expected = (
        "unknown reason 'nonsense'; expected one of bulk_size, internal_error, invalid_field,"
    )
    assert expected in done.stderr
    assert "unknown_order" in done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr  # one line, like a bad setting
    assert done.stderr.endswith("(see stocksync dlq list --help)\n")


def test_dlq_owner_must_be_a_known_team_and_help_lists_them(tmp_path: Path) -> None:
    done = stocksync("dlq", "replay", "--owner", "marketing", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "stocksync dlq replay: error: argument --owner: unknown owner 'marketing'; expected one"
        " of erp, warehouse, commerce, returns, finance, unowned (see stocksync dlq replay"
        " --help)"
    ]
    helped = stocksync("dlq", "list", "--help", cwd=tmp_path)
    text = " ".join(helped.stdout.split())
    assert "--owner T only events owned by team T ([dlq.owners]): erp, warehouse," in text
    assert "--show-body" in text
    assert "unknown_order" in text and "malformed_json" in text  # every reason


def test_audit_names_the_login_without_user(monkeypatch: pytest.MonkeyPatch) -> None:
    import pwd

    from stocksync.ops.commands import operator_name

    monkeypatch.delenv("USER", raising=False)
    assert operator_name() == pwd.getpwuid(os.getuid()).pw_name
    monkeypatch.setenv("USER", "alice")
    assert operator_name() == "alice"


def test_a_running_dev_setup_is_used_without_settings_and_said_first(
    calls: list[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from stocksync.config.devsetup import DevSetup, write_state

    monkeypatch.setenv(DEV_STATE, str(tmp_path / "dev.json"))
    code = "import time; print('up', flush=True); time.sleep(30)"
    with subprocess.Popen([sys.executable, "-c", code, "stocksync", "dev"],
                          stdout=subprocess.PIPE) as process:  # fmt: skip
        try:
            assert process.stdout is not None and process.stdout.readline() == b"up\n"
            setup = DevSetup(pid=process.pid, started_at="2026-12-01T09:00:00+00:00",
                             broker="kafka://127.0.0.1:40001", redis_url="redis://127.0.0.1:6390/0",
                             redis_namespace="stocksync-dev", topic_prefix="stocksync",
                             api_url="http://127.0.0.1:8090", worker_url="http://127.0.0.1:8091",
                             data_dir=str(tmp_path))  # fmt: skip
            write_state(tmp_path / "dev.json", setup)
            assert cli.main(["dlq", "list"]) == 0
            err = capsys.readouterr().err
            # dev itself never takes another dev's setup.
            assert cli.main(["dev"]) == 0
            monkeypatch.setenv("STOCKSYNC_BROKER", "kafka-1:9092")
            assert cli.main(["dlq", "list"]) == 0
        finally:
            process.kill()
    (_, (used, args), _), (_, (dev_settings,), _), (_, (own, _own_args), _) = calls
    assert err.splitlines()[0].startswith(
        f"stocksync: using the running `stocksync dev` setup (pid {process.pid}): broker"
        " kafka://127.0.0.1:40001, Redis redis://127.0.0.1:6390/0 keys stocksync-dev:*"
    )
    assert (used.broker, used.redis_url, used.redis_namespace) == (
        setup.broker, setup.redis_url, setup.redis_namespace
    )
    assert args.dev_setup == setup
    assert dev_settings == Settings()
    assert own.broker == "kafka://kafka-1:9092"
