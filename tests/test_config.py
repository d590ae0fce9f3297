"""Tests of aggregator.config: sources, precedence, validation and messages."""

import dataclasses
import json
import textwrap
from pathlib import Path

import pytest

from aggregator.config import (
    ForwarderConfig,
    ListenAddress,
    Settings,
    build_argument_parser,
    load_settings,
    settings_summary,
)
from aggregator.errors import ConfigError


def write_yaml(folder: Path, text: str, name: str = "aggregator.yml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_yaml(folder: Path, text: str) -> Settings:
    path = write_yaml(folder, text)
    return load_settings(["--config", str(path)], {})


def config_error(argv: list[str], environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(argv, environ or {})
    message = str(caught.value)
    assert "\n" not in message
    return message


def yaml_error(folder: Path, text: str) -> str:
    path = write_yaml(folder, text)
    return config_error(["--config", str(path)])


# --- Defaults and precedence --------------------------------------------------------


def test_defaults_without_sources() -> None:
    settings = load_settings([], {})

    assert settings == Settings()
    assert settings.listen == (ListenAddress("127.0.0.1", 6969),)
    assert settings.forwarders == ()
    assert settings.announce_interval == 1800
    assert settings.log_level == "info"


def default_as_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, ListenAddress):
        return f"[{value.host}]:{value.port}" if ":" in value.host else f"{value.host}:{value.port}"
    if isinstance(value, tuple):
        return ",".join(default_as_text(item) for item in value)
    if isinstance(value, bool):
        return "true" if value else "false"

    return str(value)


def test_every_field_settable_by_env_and_flag() -> None:
    parser = build_argument_parser()
    options = {option for action in parser._actions for option in action.option_strings}

    for field in dataclasses.fields(Settings):
        if field.name == "forwarders":
            assert "--forwarder" in options
            continue
        flag = "--" + field.name.replace("_", "-")
        assert flag in options, flag

    # Each AGGREGATOR_<KEY> name is accepted with its default written as text.
    defaults = Settings()
    for field in dataclasses.fields(Settings):
        if field.name == "forwarders":
            continue
        name = "AGGREGATOR_" + field.name.upper()
        assert load_settings([], {name: default_as_text(getattr(defaults, field.name))}) == defaults, name

    environ = dict(
        {
            "AGGREGATOR_LISTEN": "127.0.0.1:1",
            "AGGREGATOR_LOG_LEVEL": "debug",
            "AGGREGATOR_ANNOUNCE_INTERVAL": "100",
            "AGGREGATOR_MIN_INTERVAL": "50",
            "AGGREGATOR_FIRST_INTERVAL": "10",
            "AGGREGATOR_FIRST_ANNOUNCE_WAIT_MS": "0",
            "AGGREGATOR_PEER_TTL": "200",
            "AGGREGATOR_UPSTREAM_PEER_TTL": "300",
            "AGGREGATOR_WORKERS": "2",
            "AGGREGATOR_DEFAULT_NUMWANT": "5",
            "AGGREGATOR_MAX_NUMWANT": "6",
            "AGGREGATOR_UPSTREAM_NUMWANT": "7",
            "AGGREGATOR_UPSTREAM_TIMEOUT_S": "1.5",
            "AGGREGATOR_UPSTREAM_MAX_BODY_BYTES": "4096",
            "AGGREGATOR_RETRY_BASE_S": "2",
            "AGGREGATOR_RETRY_MAX_S": "3",
            "AGGREGATOR_UDP_LISTEN": "127.0.0.1:2",
            "AGGREGATOR_MAX_SCRAPE_HASHES": "10",
            "AGGREGATOR_FULL_SCRAPE": "true",
            "AGGREGATOR_TRUSTED_PROXIES": "10.0.0.0/8",
            "AGGREGATOR_TRUSTED_IP_PARAM_NETWORKS": "192.168.0.0/16,fd00::/8",
            "AGGREGATOR_FORWARDER_MAX_INFLIGHT": "3",
            "AGGREGATOR_UPSTREAM_CONNECT_TIMEOUT_S": "1",
            "AGGREGATOR_UPSTREAM_UDP_TRIES": "3",
            "AGGREGATOR_DNS_CACHE_TTL_S": "60",
            "AGGREGATOR_SUSPEND_S": "120",
            "AGGREGATOR_DISABLE_AFTER_FAILURES": "4",
            "AGGREGATOR_PROBE_BASE_S": "5",
            "AGGREGATOR_PROBE_MAX_S": "50",
            "AGGREGATOR_DRAIN_TIMEOUT_S": "7",
            "AGGREGATOR_ACCESS_LOG": "1",
            "AGGREGATOR_ACCESS_LOG_SAMPLE": "0.25",
            "AGGREGATOR_ADMIN_LISTEN": "",
        }
    )
    settings = load_settings([], environ)
    assert settings == Settings(
        listen=(ListenAddress("127.0.0.1", 1),),
        announce_interval=100,
        min_interval=50,
        first_interval=10,
        first_announce_wait_ms=0,
        peer_ttl=200,
        upstream_peer_ttl=300,
        workers=2,
        default_numwant=5,
        max_numwant=6,
        upstream_numwant=7,
        upstream_timeout_s=1.5,
        upstream_max_body_bytes=4096,
        retry_base_s=2.0,
        retry_max_s=3.0,
        log_level="debug",
        udp_listen=(ListenAddress("127.0.0.1", 2),),
        max_scrape_hashes=10,
        full_scrape=True,
        trusted_proxies=("10.0.0.0/8",),
        trusted_ip_param_networks=("192.168.0.0/16", "fd00::/8"),
        forwarder_max_inflight=3,
        upstream_connect_timeout_s=1.0,
        upstream_udp_tries=3,
        dns_cache_ttl_s=60.0,
        suspend_s=120.0,
        disable_after_failures=4,
        probe_base_s=5.0,
        probe_max_s=50.0,
        admin_listen=None,
        drain_timeout_s=7.0,
        access_log=True,
        access_log_sample=0.25,
    )


def test_yaml_file_sets_values(tmp_path: Path) -> None:
    settings = load_yaml(
        tmp_path,
        """
        listen:
          - 127.0.0.1:7000
          - "[::1]:7001"
        announce_interval: 600
        min_interval: 300
        workers: 4
        upstream_timeout_s: 2.5
        upstream_port: 51413
        tracker_id: retracker-1
        log_level: WARNING
        """,
    )

    assert settings.listen == (ListenAddress("127.0.0.1", 7000), ListenAddress("::1", 7001))
    assert settings.announce_interval == 600
    assert settings.min_interval == 300
    assert settings.workers == 4
    assert settings.upstream_timeout_s == 2.5
    assert settings.upstream_port == 51413
    assert settings.tracker_id == "retracker-1"
    assert settings.log_level == "warning"
    assert settings.max_numwant == 200


def test_empty_yaml_file_gives_defaults(tmp_path: Path) -> None:
    assert load_yaml(tmp_path, "") == Settings()


def test_env_overrides_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "workers: 4\nmax_numwant: 100\n")

    settings = load_settings(["--config", str(path)], {"AGGREGATOR_WORKERS": "8"})

    assert settings.workers == 8
    assert settings.max_numwant == 100


def test_flags_override_env(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "workers: 4\nlisten: 127.0.0.1:7000\n")
    environ = {"AGGREGATOR_WORKERS": "8", "AGGREGATOR_LISTEN": "127.0.0.1:7001,[::1]:7001"}

    settings = load_settings(["--config", str(path), "--workers", "12"], environ)
    assert settings.workers == 12
    assert settings.listen == (ListenAddress("127.0.0.1", 7001), ListenAddress("::1", 7001))

    settings = load_settings(["--config", str(path), "--listen", "127.0.0.1:7002"], environ)
    assert settings.listen == (ListenAddress("127.0.0.1", 7002),)


def test_config_file_from_env_variable(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "workers: 3\n")

    assert load_settings([], {"AGGREGATOR_CONFIG": str(path)}).workers == 3


def test_config_flag_wins_over_env_variable(tmp_path: Path) -> None:
    from_env = write_yaml(tmp_path, "workers: 3\n", "env.yml")
    from_flag = write_yaml(tmp_path, "workers: 5\n", "flag.yml")

    settings = load_settings(["--config", str(from_flag)], {"AGGREGATOR_CONFIG": str(from_env)})

    assert settings.workers == 5


def test_empty_env_value_unsets_optional(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "upstream_port: 6881\ntracker_id: abc\n")

    settings = load_settings(
        ["--config", str(path)], {"AGGREGATOR_UPSTREAM_PORT": "", "AGGREGATOR_TRACKER_ID": ""}
    )

    assert settings.upstream_port is None
    assert settings.tracker_id is None


def test_env_string_key_not_parsed_as_number() -> None:
    settings = load_settings([], {"AGGREGATOR_TRACKER_ID": "0123"})

    assert settings.tracker_id == "0123"


def test_float_key_accepts_int(tmp_path: Path) -> None:
    settings = load_yaml(tmp_path, "upstream_timeout_s: 5\nretry_base_s: 1\n")

    assert settings.upstream_timeout_s == 5.0
    assert isinstance(settings.upstream_timeout_s, float)
    assert isinstance(settings.retry_base_s, float)


def test_log_level_case_insensitive() -> None:
    assert load_settings(["--log-level", "DEBUG"], {}).log_level == "debug"
    assert load_settings([], {"AGGREGATOR_LOG_LEVEL": "Error"}).log_level == "error"


# --- Listen addresses ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:6969", ListenAddress("127.0.0.1", 6969)),
        ("[::1]:6969", ListenAddress("::1", 6969)),
        ("0.0.0.0:80", ListenAddress("0.0.0.0", 80)),
        ("[::]:0", ListenAddress("::", 0)),
        ("[0:0::1]:65535", ListenAddress("::1", 65535)),
        ("localhost:7000", ListenAddress("localhost", 7000)),
        (" 127.0.0.1:1 ", ListenAddress("127.0.0.1", 1)),
    ],
)
def test_listen_parses_address(text: str, expected: ListenAddress) -> None:
    assert load_settings(["--listen", text], {}).listen == (expected,)


def test_listen_flag_repeats() -> None:
    settings = load_settings(["--listen", "127.0.0.1:0", "--listen", "[::1]:0,127.0.0.1:7000"], {})

    assert settings.listen == (
        ListenAddress("127.0.0.1", 0),
        ListenAddress("::1", 0),
        ListenAddress("127.0.0.1", 7000),
    )


@pytest.mark.parametrize(
    "text",
    [
        "localhost",
        "127.0.0.1:70000",
        "127.0.0.1:",
        ":6969",
        "::1:6969",
        "[::1]6969",
        "[::1:6969",
        "[127.0.0.1]:6969",
        "999.1.1.1:6969",
        "host name:80",
        "127.0.0.1:-1",
        "127.0.0.1:http",
    ],
)
def test_listen_rejects_bad_address(text: str) -> None:
    message = config_error(["--listen", text])

    assert "invalid listen" in message
    assert repr(text) in message
    assert "--listen" in message


def test_listen_rejects_empty_list(tmp_path: Path) -> None:
    message = yaml_error(tmp_path, "listen: []\n")

    assert "invalid listen" in message
    assert "at least one" in message


def test_listen_rejects_non_string_item(tmp_path: Path) -> None:
    message = yaml_error(tmp_path, "listen: [6969]\n")

    assert "invalid listen" in message
    assert "6969" in message


def test_listen_rejects_duplicate_port() -> None:
    message = config_error(["--listen", "127.0.0.1:7000", "--listen", "127.0.0.1:7000"])

    assert "invalid listen" in message
    assert "127.0.0.1:7000 is listed twice" in message


def test_listen_allows_repeated_port_zero() -> None:
    settings = load_settings(["--listen", "127.0.0.1:0,127.0.0.1:0"], {})

    assert settings.listen == (ListenAddress("127.0.0.1", 0), ListenAddress("127.0.0.1", 0))


# --- Forwarders ---------------------------------------------------------------------


def test_forwarders_inline_list(tmp_path: Path) -> None:
    settings = load_yaml(
        tmp_path,
        """
        forwarders:
          - http://127.0.0.1:6970/announce
          - uri: udp://tracker.example:1337/announce
            name: tracker
            ip: 192.168.1.15
            host: tracker.example
        """,
    )

    assert settings.forwarders == (
        ForwarderConfig("http://127.0.0.1:6970/announce", "127.0.0.1:6970", None, None),
        ForwarderConfig("udp://tracker.example:1337/announce", "tracker", "192.168.1.15", "tracker.example"),
    )


def test_forwarders_file_relative_to_config(tmp_path: Path) -> None:
    config_folder = tmp_path / "etc"
    config_folder.mkdir()
    write_yaml(
        config_folder,
        """
        - uri: http://127.0.0.1:6970/announce
        - uri: http://127.0.0.1:6971/announce
          ip: 192.168.1.15
        """,
        "forwarders.yml",
    )
    path = write_yaml(
        config_folder,
        """
        forwarders_file: forwarders.yml
        forwarders:
          - https://inline.example/announce
        """,
    )

    settings = load_settings(["--config", str(path)], {})

    assert settings.forwarders_file == str(config_folder / "forwarders.yml")
    assert [forwarder.uri for forwarder in settings.forwarders] == [
        "https://inline.example/announce",
        "http://127.0.0.1:6970/announce",
        "http://127.0.0.1:6971/announce",
    ]
    assert settings.forwarders[2].ip == "192.168.1.15"
    assert settings.forwarders[1].ip is None


def test_forwarders_file_from_flag(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "- udp://127.0.0.1:6970\n", "forwarders.yml")

    settings = load_settings(["--forwarders-file", str(path)], {})

    assert settings.forwarders == (ForwarderConfig("udp://127.0.0.1:6970", "127.0.0.1:6970", None, None),)


def test_empty_forwarders_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "", "forwarders.yml")

    assert load_settings(["--forwarders-file", str(path)], {}).forwarders == ()


def test_forwarder_flag_replaces_inline_list(tmp_path: Path) -> None:
    write_yaml(tmp_path, "- http://127.0.0.1:6972/announce\n", "forwarders.yml")
    path = write_yaml(
        tmp_path,
        """
        forwarders: [http://127.0.0.1:6970/announce]
        forwarders_file: forwarders.yml
        """,
    )

    settings = load_settings(["--config", str(path), "--forwarder", "http://127.0.0.1:6971/announce"], {})

    assert [forwarder.name for forwarder in settings.forwarders] == ["127.0.0.1:6971", "127.0.0.1:6972"]


def test_forwarders_env_comma_separated() -> None:
    environ = {"AGGREGATOR_FORWARDERS": "http://a.example/announce, udp://b.example:80/announce"}

    settings = load_settings([], environ)

    assert [forwarder.uri for forwarder in settings.forwarders] == [
        "http://a.example/announce",
        "udp://b.example:80/announce",
    ]


@pytest.mark.parametrize(
    ("uri", "name"),
    [
        ("http://tracker.example/announce", "tracker.example:80"),
        ("https://tracker.example/announce", "tracker.example:443"),
        ("HTTP://Tracker.Example:8080/announce", "tracker.example:8080"),
        ("udp://10.0.0.1:1337", "10.0.0.1:1337"),
        ("http://[::1]:6970/announce", "[::1]:6970"),
    ],
)
def test_forwarder_name_from_uri(uri: str, name: str) -> None:
    settings = load_settings(["--forwarder", uri], {})

    assert settings.forwarders[0].name == name


def test_forwarder_name_clash_suffix(tmp_path: Path) -> None:
    settings = load_yaml(
        tmp_path,
        """
        forwarders:
          - http://127.0.0.1:6970/a
          - http://127.0.0.1:6970/b
          - uri: http://127.0.0.1:6970/c
            name: 127.0.0.1:6970-2
          - http://127.0.0.1:6970/d
        """,
    )

    names = [forwarder.name for forwarder in settings.forwarders]
    assert names == ["127.0.0.1:6970", "127.0.0.1:6970-3", "127.0.0.1:6970-2", "127.0.0.1:6970-4"]


def test_explicit_name_beats_derived_name(tmp_path: Path) -> None:
    settings = load_yaml(
        tmp_path,
        """
        forwarders:
          - http://127.0.0.1:6970/a
          - uri: http://other.example/announce
            name: 127.0.0.1:6970
        """,
    )

    assert [forwarder.name for forwarder in settings.forwarders] == ["127.0.0.1:6970-2", "127.0.0.1:6970"]


def test_forwarder_duplicate_explicit_name(tmp_path: Path) -> None:
    message = yaml_error(
        tmp_path,
        """
        forwarders:
          - {uri: http://a.example/announce, name: main}
          - {uri: http://b.example/announce, name: main}
        """,
    )

    assert "invalid forwarders[1].name" in message
    assert "'main'" in message


def test_forwarder_duplicate_entry(tmp_path: Path) -> None:
    message = yaml_error(
        tmp_path,
        """
        forwarders:
          - http://a.example/announce
          - http://a.example/announce
        """,
    )

    assert "invalid forwarders[1]" in message
    assert "'http://a.example/announce' is listed twice" in message


def test_forwarder_same_uri_other_ip_allowed(tmp_path: Path) -> None:
    settings = load_yaml(
        tmp_path,
        """
        forwarders:
          - {uri: http://a.example/announce, ip: 10.0.0.1}
          - {uri: http://a.example/announce, ip: 10.0.0.2}
        """,
    )

    assert [forwarder.name for forwarder in settings.forwarders] == ["a.example:80", "a.example:80-2"]


def test_forwarder_unknown_key(tmp_path: Path) -> None:
    message = yaml_error(
        tmp_path,
        """
        forwarders:
          - http://a.example/announce
          - http://b.example/announce
          - url: http://c.example/announce
        """,
    )

    assert "invalid forwarders[2]: unknown key 'url', expected uri, name, ip, host" in message


def test_forwarder_missing_uri(tmp_path: Path) -> None:
    message = yaml_error(tmp_path, "forwarders:\n  - name: lonely\n")

    assert "invalid forwarders[0]" in message
    assert "missing key 'uri'" in message


@pytest.mark.parametrize(
    "uri",
    [
        "ftp://tracker.example/announce",
        "tracker.example/announce",
        "udp://tracker.example/announce",
        "http://:80/announce",
        "http://tracker.example:99999/announce",
        "http://tracker.example:0/announce",
        "http://tracker.example:port/announce",
        "http://tracker example/announce",
        "http://999.1.1.1/announce",
    ],
)
def test_forwarder_rejects_bad_uri(uri: str) -> None:
    message = config_error(["--forwarder", uri])

    assert "invalid forwarders[0].uri" in message
    assert repr(uri) in message
    assert "--forwarder" in message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("ip", "300.1.1.1"),
        ("ip", "localhost"),
        ("name", ""),
        ("name", "two words"),
        ("host", "a.example\r\nX-Injected: 1"),
    ],
)
def test_forwarder_rejects_bad_field(tmp_path: Path, key: str, value: str) -> None:
    entry = json.dumps({"uri": "http://a.example/announce", key: value})

    message = yaml_error(tmp_path, f"forwarders:\n  - {entry}\n")

    assert f"invalid forwarders[0].{key}" in message
    assert repr(value) in message


def test_forwarder_ipv6_ip_normalized(tmp_path: Path) -> None:
    settings = load_yaml(tmp_path, 'forwarders:\n  - {uri: "http://a.example/", ip: "2001:DB8:0::1"}\n')

    assert settings.forwarders[0].ip == "2001:db8::1"


def test_forwarder_rejects_non_entry(tmp_path: Path) -> None:
    message = yaml_error(tmp_path, "forwarders:\n  - 42\n")

    assert "invalid forwarders[0]" in message
    assert "got 42" in message


def test_forwarders_rejects_mapping(tmp_path: Path) -> None:
    message = yaml_error(tmp_path, "forwarders: {uri: http://a.example/}\n")

    assert "invalid forwarders:" in message
    assert "'uri'" in message


def test_forwarders_file_error_names_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "- http://a.example/\n- uri: http://b.example/\n  url: x\n", "forwarders.yml")

    message = config_error(["--forwarders-file", str(path)])

    assert "invalid forwarders_file[1]: unknown key 'url'" in message
    assert str(path) in message


def test_forwarders_file_not_list(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "uri: http://a.example/\n", "forwarders.yml")

    message = config_error(["--forwarders-file", str(path)])

    assert "invalid forwarders_file" in message
    assert str(path) in message
    assert "a mapping" in message


def test_forwarders_file_missing(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "forwarders_file: missing.yml\n")

    message = config_error(["--config", str(path)])

    assert "failed to read forwarders_file" in message
    assert str(tmp_path / "missing.yml") in message


# --- Bad values ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "text", "key", "shown"),
    [
        ("AGGREGATOR_WORKERS", "abc", "workers", "'abc'"),
        ("AGGREGATOR_WORKERS", "0", "workers", "0"),
        ("AGGREGATOR_WORKERS", "4097", "workers", "4097"),
        ("AGGREGATOR_WORKERS", "2.5", "workers", "2.5"),
        ("AGGREGATOR_ANNOUNCE_INTERVAL", "0", "announce_interval", "0"),
        ("AGGREGATOR_ANNOUNCE_INTERVAL", "86401", "announce_interval", "86401"),
        ("AGGREGATOR_MIN_INTERVAL", "-5", "min_interval", "-5"),
        ("AGGREGATOR_FIRST_ANNOUNCE_WAIT_MS", "60001", "first_announce_wait_ms", "60001"),
        ("AGGREGATOR_PEER_TTL", "0", "peer_ttl", "0"),
        ("AGGREGATOR_UPSTREAM_PEER_TTL", "[1]", "upstream_peer_ttl", "[1]"),
        ("AGGREGATOR_MAX_NUMWANT", "10001", "max_numwant", "10001"),
        ("AGGREGATOR_UPSTREAM_NUMWANT", "-1", "upstream_numwant", "-1"),
        ("AGGREGATOR_UPSTREAM_TIMEOUT_S", "0", "upstream_timeout_s", "0"),
        ("AGGREGATOR_UPSTREAM_TIMEOUT_S", "-1.5", "upstream_timeout_s", "-1.5"),
        ("AGGREGATOR_UPSTREAM_TIMEOUT_S", ".inf", "upstream_timeout_s", "inf"),
        ("AGGREGATOR_UPSTREAM_TIMEOUT_S", "soon", "upstream_timeout_s", "'soon'"),
        ("AGGREGATOR_UPSTREAM_MAX_BODY_BYTES", "0", "upstream_max_body_bytes", "0"),
        ("AGGREGATOR_UPSTREAM_PORT", "0", "upstream_port", "0"),
        ("AGGREGATOR_UPSTREAM_PORT", "65536", "upstream_port", "65536"),
        ("AGGREGATOR_RETRY_MAX_S", "86401", "retry_max_s", "86401"),
        ("AGGREGATOR_LOG_LEVEL", "verbose", "log_level", "'verbose'"),
        ("AGGREGATOR_LOG_LEVEL", "", "log_level", "''"),
    ],
)
def test_bad_env_value(variable: str, text: str, key: str, shown: str) -> None:
    message = config_error([], {variable: text})

    assert f"invalid {key}:" in message
    assert f"got {shown}" in message
    assert f"(from {variable})" in message


@pytest.mark.parametrize(
    ("argv", "key", "shown"),
    [
        (["--min-interval", "2000"], "min_interval", "2000"),
        (["--first-interval", "1801"], "first_interval", "1801"),
        (["--announce-interval", "100"], "min_interval", "900"),
        (["--default-numwant", "300"], "default_numwant", "300"),
        (["--retry-base-s", "2000"], "retry_base_s", "2000"),
    ],
)
def test_bad_value_order(argv: list[str], key: str, shown: str) -> None:
    message = config_error(argv)

    assert f"invalid {key}:" in message
    assert f"got {shown}" in message


def test_order_error_names_both_keys() -> None:
    message = config_error(["--default-numwant", "300"])

    assert message == "invalid default_numwant: expected at most max_numwant (200), got 300 (from --default-numwant)"


def test_bad_flag_value_names_flag() -> None:
    message = config_error(["--workers", "abc"])

    assert message == "invalid workers: expected an integer from 1 to 4096, got 'abc' (from --workers)"


@pytest.mark.parametrize(
    ("text", "key", "shown"),
    [
        ("workers: true", "workers", "True"),
        ("max_numwant: false", "max_numwant", "False"),
        ("upstream_timeout_s: true", "upstream_timeout_s", "True"),
        ("upstream_port: yes", "upstream_port", "True"),
    ],
)
def test_bool_rejected_as_number(tmp_path: Path, text: str, key: str, shown: str) -> None:
    message = yaml_error(tmp_path, text + "\n")

    assert f"invalid {key}:" in message
    assert f"got {shown}" in message


@pytest.mark.parametrize(
    ("text", "key", "shown"),
    [
        ("workers: 8.5", "workers", "8.5"),
        ("workers: '8'", "workers", "'8'"),
        ("tracker_id: 123", "tracker_id", "123"),
        ("tracker_id: ''", "tracker_id", "''"),
        ("log_level: [info]", "log_level", "['info']"),
        ("forwarders_file: 5", "forwarders_file", "5"),
    ],
)
def test_bad_yaml_value(tmp_path: Path, text: str, key: str, shown: str) -> None:
    message = yaml_error(tmp_path, text + "\n")

    assert f"invalid {key}:" in message
    assert f"got {shown}" in message
    assert str(tmp_path / "aggregator.yml") in message


# --- Unknown keys and broken files --------------------------------------------------


def test_unknown_key_with_suggestion(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "wrokers: 4\n")

    message = config_error(["--config", str(path)])

    assert message == f"unknown key 'wrokers' in {path} (did you mean 'workers'?)"


def test_unknown_key_dashed_suggestion(tmp_path: Path) -> None:
    message = yaml_error(tmp_path, "announce-interval: 60\n")

    assert "unknown key 'announce-interval'" in message
    assert "did you mean 'announce_interval'?" in message


def test_unknown_key_without_suggestion(tmp_path: Path) -> None:
    message = yaml_error(tmp_path, "zzzz: 1\n")

    assert "unknown key 'zzzz'" in message
    assert "did you mean" not in message


def test_unknown_env_variable() -> None:
    message = config_error([], {"AGGREGATOR_WROKERS": "4", "PATH": "/bin"})

    assert message == "unknown environment variable AGGREGATOR_WROKERS (did you mean AGGREGATOR_WORKERS?)"


def test_unknown_option_raises_config_error() -> None:
    message = config_error(["--wrokers", "4"])

    assert "invalid command line" in message
    assert "--wrokers" in message


def test_abbreviated_option_rejected() -> None:
    message = config_error(["--work", "4"])

    assert "--work" in message


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "workers: 4\nlisten: [127.0.0.1:6969\nlog_level: info\n")

    message = config_error(["--config", str(path)])

    assert "invalid YAML in config file" in message
    assert str(path) in message
    assert "line 3" in message


def test_yaml_duplicate_key_rejected(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "workers: 4\nworkers: 8\n")

    message = config_error(["--config", str(path)])

    assert str(path) in message
    assert "duplicate key 'workers'" in message
    assert "line 2" in message


def test_yaml_not_mapping(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "- workers\n")

    message = config_error(["--config", str(path)])

    assert f"invalid config file {path}" in message
    assert "a list" in message


def test_config_file_missing(tmp_path: Path) -> None:
    path = tmp_path / "absent.yml"

    message = config_error(["--config", str(path)])

    assert f"failed to read config file {path}" in message
    assert "No such file" in message


def test_config_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yml"
    path.write_bytes("tracker_id: caf\xe9\n".encode("latin-1"))

    message = config_error(["--config", str(path)])

    assert str(path) in message
    assert "UTF-8" in message


def test_help_exits_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        load_settings(["--help"], {})

    assert caught.value.code == 0
    assert "--announce-interval" in capsys.readouterr().out


# --- Summary ------------------------------------------------------------------------


def test_settings_summary_is_json(tmp_path: Path) -> None:
    settings = load_settings(
        [
            "--listen",
            "[::1]:0,127.0.0.1:7000",
            "--forwarder",
            "https://user:secret@tracker.example:8443/abcdef123456/announce?passkey=hidden",
            "--workers",
            "3",
        ],
        {},
    )

    summary = settings_summary(settings)
    text = json.dumps(summary)

    assert summary["listen"] == ["[::1]:0", "127.0.0.1:7000"]
    assert summary["workers"] == 3
    assert summary["forwarders"] == [
        {"name": "tracker.example:8443", "endpoint": "https://tracker.example:8443", "ip": None, "host": None}
    ]
    assert "hidden" not in text
    assert "abcdef123456" not in text
    assert "secret" not in text
    assert set(summary) == {field.name for field in dataclasses.fields(Settings)}


def test_protocol_and_operations_keys(tmp_path: Path) -> None:
    settings = load_yaml(
        tmp_path,
        """
        udp_listen: ["127.0.0.1:6969", "[::1]:6969"]
        trusted_proxies: [10.0.0.0/8, "fd00::/8"]
        admin_listen: null
        full_scrape: true
        infohash_denylist: lists/deny.txt
        """,
    )

    assert settings.udp_listen == (ListenAddress("127.0.0.1", 6969), ListenAddress("::1", 6969))
    assert settings.trusted_proxies == ("10.0.0.0/8", "fd00::/8")
    assert settings.admin_listen is None
    assert settings.full_scrape is True
    assert settings.infohash_denylist == str(tmp_path / "lists" / "deny.txt")


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("trusted_proxies", "10.0.0.0/33", "CIDR network"),
        ("full_scrape", "maybe", "true or false"),
        ("access_log_sample", "1.5", "from 0 to 1"),
        ("admin_listen", "localhost", "HOST:PORT"),
        ("probe_base_s", "100", "at most probe_max_s"),
    ],
)
def test_new_keys_reject_bad_values(key: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings([], {"AGGREGATOR_" + key.upper(): value, "AGGREGATOR_PROBE_MAX_S": "50"})

    assert key in str(error.value)
    assert expected in str(error.value)
