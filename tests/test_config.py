"""``frameiod.config``: what a config file may say, and exactly what frameiod says back.

Every error test compares the whole message: the file, the key path, what was expected
and what was found. Every test passes ``environ`` explicitly so the real environment
(a developer's $STATE_DIRECTORY or $CREDENTIALS_DIRECTORY) cannot leak in.
"""

from __future__ import annotations

import importlib.util
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydantic_core import PydanticCustomError
from support import write_config

from frameiod.config import (
    DEFAULT_CONFIG_PATHS,
    DEV_SECRET,
    Config,
    ConfigError,
    DispatchConfig,
    LogConfig,
    MetricsConfig,
    Secret,
    ServerConfig,
    SpoolConfig,
    dev_secret_problem,
    find_config,
    format_duration,
    load_config,
    parse_duration,
)
from frameiod.config import loading as config_loading

SHIPPED_CONFIG = Path(__file__).resolve().parents[1] / "config.toml"
# Distinctive, so a substring search cannot match anything else by accident.
HIDDEN = "zq9-HIDDEN-s3cr3t-7wV"
DURATION_EXPECTED = 'expected a duration like "30s" or "5m" (units ms, s, m, h)'
SECRET_EXPECTED = 'expected a string: a secret, "env:NAME", "file:PATH" or "credential:NAME"'
SOURCE_NAME_EXPECTED = "a source name is a URL segment: up to 64 letters, digits, '.', '_' or '-'"
MINIMAL_SOURCE = '[sources.default]\nsecrets = ["a-real-secret"]\n'


def problems_of(path: Path, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, environ={} if environ is None else environ)
    assert str(excinfo.value) == "\n".join(excinfo.value.problems)
    return excinfo.value.problems


def dev_secret_refusal(path: Path, host: str, source: str = "default") -> str:
    return (
        f"{path}: sources.{source}.secrets: the development secret from the shipped "
        f'config.toml is refused while server.host ("{host}") is not a loopback address; '
        "set the secret Frame.io gave you for this webhook"
    )


class TestShippedConfig:
    def test_shipped_config_loads_out_of_the_box_with_the_documented_values(self) -> None:
        config = load_config(SHIPPED_CONFIG, environ={})

        assert config.server.host == "127.0.0.1"
        assert config.server.port == 8080
        assert config.server.max_body_bytes == 65536
        assert config.log.level == "info"
        assert config.log.format == "auto"
        assert list(config.sources) == ["default"]
        assert config.sources["default"].secret_values() == [DEV_SECRET]
        assert config.sources["default"].tolerance == 300.0
        assert config.plugins.disable == ["notify", "comment_on_ready", "otel"]
        assert config.plugins.tables == {
            "event_log": {"path": "events.jsonl", "max_bytes": 10485760, "backups": 5}
        }

    def test_shipped_config_states_the_same_values_as_the_built_in_defaults(self) -> None:
        """Deleting a table from the shipped file must not change behaviour."""
        config = load_config(SHIPPED_CONFIG, environ={})

        assert config.server == ServerConfig()
        assert config.log == LogConfig()
        assert config.spool == SpoolConfig()
        assert config.dispatch == DispatchConfig()
        assert config.metrics == MetricsConfig()

    def test_shipped_config_resolves_relative_paths_against_its_own_folder(self) -> None:
        config = load_config(SHIPPED_CONFIG, environ={})

        assert config.path == SHIPPED_CONFIG
        assert config.base_dir == SHIPPED_CONFIG.parent

    def test_shipped_config_carries_the_development_secret_constant(self) -> None:
        assert f'secrets = ["{DEV_SECRET}"]' in SHIPPED_CONFIG.read_text(encoding="utf-8")


class TestDefaults:
    def test_omitted_tables_take_the_documented_defaults(self, tmp_path: Path) -> None:
        config = load_config(write_config(tmp_path, MINIMAL_SOURCE), environ={})

        assert config.server.host == "127.0.0.1"
        assert config.server.port == 8080
        assert config.server.max_body_bytes == 65536
        assert config.log.level == "info"
        assert config.log.format == "auto"
        assert config.plugins.disable == []

    def test_omitted_tolerance_defaults_to_five_minutes(self, tmp_path: Path) -> None:
        config = load_config(write_config(tmp_path, MINIMAL_SOURCE), environ={})

        assert config.sources["default"].tolerance == 300.0

    def test_partial_table_keeps_defaults_for_the_keys_it_omits(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, '[server]\nport = 9000\n[log]\nformat = "json"\n')
        path.write_text(path.read_text() + MINIMAL_SOURCE)

        config = load_config(path, environ={})

        assert (config.server.host, config.server.port) == ("127.0.0.1", 9000)
        assert config.server.max_body_bytes == 65536
        assert (config.log.level, config.log.format) == ("info", "json")

    def test_every_documented_key_is_accepted(self, tmp_path: Path) -> None:
        path = write_config(
            tmp_path,
            """
            [server]
            host = "::1"
            port = 0
            max_body_bytes = 1
            [log]
            level = "debug"
            format = "console"
            [sources.frame-io_2]
            secrets = ["new-secret", "old-secret"]
            tolerance = "90s"
            [plugins]
            disable = ["slack", "s3"]
            """,
        )

        config = load_config(path, environ={})

        assert config.server == ServerConfig(host="::1", port=0, max_body_bytes=1)
        assert config.log == LogConfig(level="debug", format="console")
        source = config.sources["frame-io_2"]
        assert source.secret_values() == ["new-secret", "old-secret"]  # rotation order kept
        assert source.tolerance == 90.0
        assert config.plugins.disable == ["slack", "s3"]


class TestParseDuration:
    @pytest.mark.parametrize(
        ("text", "seconds"),
        [("250ms", 0.25), ("30s", 30.0), ("5m", 300.0), ("1.5h", 5400.0), ("0s", 0.0)],
    )
    def test_accepts_ms_s_m_h(self, text: str, seconds: float) -> None:
        assert parse_duration(text) == seconds

    @pytest.mark.parametrize(
        ("value", "shown"),
        [
            ("five", '"five"'),
            ("5", '"5"'),  # a bare number has no unit
            (5, "5"),  # a TOML integer, not a string
            ("5d", '"5d"'),  # days are not a unit
            ("-5s", '"-5s"'),
            ("", '""'),
        ],
    )
    def test_rejects_anything_else_and_shows_what_it_got(self, value: object, shown: str) -> None:
        with pytest.raises(PydanticCustomError) as excinfo:
            parse_duration(value)

        assert str(excinfo.value) == f"{DURATION_EXPECTED}, got {shown}"


class TestFormatDuration:
    @pytest.mark.parametrize(
        ("seconds", "text"),
        [(0.25, "250ms"), (1.5, "1500ms"), (30, "30s"), (300, "5m"), (3600, "1h"), (5400, "90m")],
    )
    def test_renders_in_the_largest_whole_unit(self, seconds: float, text: str) -> None:
        assert format_duration(seconds) == text

    @pytest.mark.parametrize("seconds", [0.001, 0.25, 1.5, 30.0, 90.0, 300.0, 3600.0, 5400.0])
    def test_parse_of_format_gives_back_the_same_seconds(self, seconds: float) -> None:
        assert parse_duration(format_duration(seconds)) == seconds

    @pytest.mark.parametrize("text", ["250ms", "30s", "5m", "1h", "90m"])
    def test_format_of_parse_gives_back_a_canonical_string(self, text: str) -> None:
        assert format_duration(parse_duration(text)) == text


class TestToleranceInTheFile:
    def test_word_instead_of_duration_is_reported_with_its_key_path(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, MINIMAL_SOURCE + 'tolerance = "five"\n')

        assert problems_of(path) == [
            f'{path}: sources.default.tolerance: {DURATION_EXPECTED}, got "five"'
        ]

    def test_zero_tolerance_is_rejected(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, MINIMAL_SOURCE + 'tolerance = "0s"\n')

        assert problems_of(path) == [
            f'{path}: sources.default.tolerance: expected a duration greater than zero, got "0s"'
        ]

    def test_an_action_deadline_frameio_would_not_wait_for_is_rejected(
        self, tmp_path: Path
    ) -> None:
        path = write_config(tmp_path, MINIMAL_SOURCE + 'action_deadline = "5s"\n')

        assert problems_of(path) == [
            f"{path}: sources.default.action_deadline: expected a duration under 5s, the time "
            "Frame.io waits for an answer (an answer later than that is never read), "
            'got "5s"'
        ]

    def test_integer_tolerance_is_rejected_because_it_has_no_unit(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, MINIMAL_SOURCE + "tolerance = 300\n")

        assert problems_of(path) == [
            f"{path}: sources.default.tolerance: {DURATION_EXPECTED}, got 300"
        ]

    def test_milliseconds_are_accepted(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, MINIMAL_SOURCE + 'tolerance = "250ms"\n')

        assert load_config(path, environ={}).sources["default"].tolerance == 0.25


class TestUnknownKeys:
    def test_top_level_typo_is_an_error_with_a_did_you_mean_hint(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, MINIMAL_SOURCE + "[sever]\nport = 1\n")

        assert problems_of(path) == [f'{path}: sever: unknown key (did you mean "server"?)']

    def test_top_level_key_unlike_any_known_one_gets_no_hint(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, 'colour = "blue"\n' + MINIMAL_SOURCE)

        assert problems_of(path) == [f"{path}: colour: unknown key"]

    def test_server_typo_prot_suggests_port(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, "[server]\nprot = 8080\n" + MINIMAL_SOURCE)

        assert problems_of(path) == [f'{path}: server.prot: unknown key (did you mean "port"?)']

    def test_log_typo_suggests_level(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, '[log]\nlevle = "info"\n' + MINIMAL_SOURCE)

        assert problems_of(path) == [f'{path}: log.levle: unknown key (did you mean "level"?)']

    def test_typo_inside_a_source_table_suggests_the_source_key(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, MINIMAL_SOURCE + 'tolerence = "5m"\n')

        assert problems_of(path) == [
            f'{path}: sources.default.tolerence: unknown key (did you mean "tolerance"?)'
        ]

    def test_unrelated_key_inside_a_source_table_is_an_error(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, MINIMAL_SOURCE + 'url = "https://example.com"\n')

        assert problems_of(path) == [f"{path}: sources.default.url: unknown key"]

    def test_unknown_key_in_plugins_is_an_error(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, MINIMAL_SOURCE + '[plugins]\nenable = ["x"]\n')

        assert problems_of(path) == [
            f'{path}: plugins.enable: unknown key (did you mean "disable"?); '
            "a plugin's settings go in a [plugins.enable] table"
        ]


class TestWrongTypesAndRanges:
    @pytest.mark.parametrize(
        ("toml", "problem"),
        [
            ('[server]\nport = "8080"', 'server.port: input should be a valid integer, got "8080"'),
            (
                "[server]\nport = 70000",
                "server.port: input should be less than or equal to 65535, got 70000",
            ),
            (
                "[server]\nport = -1",
                "server.port: input should be greater than or equal to 0, got -1",
            ),
            ("[server]\nport = true", "server.port: input should be a valid integer, got true"),
            (
                "[server]\nmax_body_bytes = 0",
                "server.max_body_bytes: input should be greater than 0, got 0",
            ),
            ("[server]\nhost = 8080", "server.host: input should be a valid string, got 8080"),
            (
                '[log]\nlevel = "loud"',
                "log.level: input should be 'debug', 'info', 'warning' or 'error', got \"loud\"",
            ),
            (
                '[log]\nformat = "xml"',
                "log.format: input should be 'auto', 'json' or 'console', got \"xml\"",
            ),
            (
                '[plugins]\ndisable = "slack"',
                'plugins.disable: expected an array, got "slack"',
            ),
            (
                '[spool]\nsynchronous = "OFF"',
                "spool.synchronous: input should be 'FULL' or 'NORMAL', got \"OFF\"",
            ),
            (
                '[spool]\nkeep_done = "a day"',
                'spool.keep_done: expected a duration like "30s" or "5m" (units ms, s, m, h), '
                'got "a day"',
            ),
            (
                '[spool]\nbackend = "postgres"',
                "spool.backend: input should be 'sqlite' or 'redis', got \"postgres\"",
            ),
            (
                '[spool]\nstream_prefix = "a b"',
                "spool.stream_prefix: a Redis key prefix: up to 64 letters, digits, '_', '.', ':' "
                "or '-', got \"a b\"",
            ),
            (
                "[spool]\nredis_url = 6379",
                f"spool.redis_url: {SECRET_EXPECTED}, got an integer",
            ),
            (
                "[dispatch]\nworkers = 0",
                "dispatch.workers: input should be greater than or equal to 1, got 0",
            ),
            (
                "[dispatch]\nmax_attempts = 0",
                "dispatch.max_attempts: input should be greater than or equal to 1, got 0",
            ),
            (
                '[dispatch]\nhandler_timeout = "0s"',
                'dispatch.handler_timeout: expected a duration greater than zero, got "0s"',
            ),
            (
                '[metrics]\npath = "/healthz"',
                "metrics.path: a path of its own: /, /healthz, /readyz and paths under "
                "/webhooks/, /actions/, /api/, /static/ are other routes of frameiod's, "
                'got "/healthz"',
            ),
            (
                '[metrics]\npath = "/api/metrics"',
                "metrics.path: a path of its own: /, /healthz, /readyz and paths under "
                "/webhooks/, /actions/, /api/, /static/ are other routes of frameiod's, "
                'got "/api/metrics"',
            ),
            (
                '[server]\nack_deadline = "1h"',
                "server.ack_deadline: expected a duration under 5s, the time Frame.io waits for "
                'an answer (an answer later than that is never read), got "1h"',
            ),
            (
                "[plugins]\ndisable = [1]",
                "plugins.disable[0]: input should be a valid string, got 1",
            ),
        ],
    )
    def test_bad_value_is_reported_with_key_path_expectation_and_value(
        self, tmp_path: Path, toml: str, problem: str
    ) -> None:
        path = write_config(tmp_path, toml + "\n" + MINIMAL_SOURCE)

        assert problems_of(path) == [f"{path}: {problem}"]


class TestSources:
    def test_file_without_sources_is_rejected(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, '[server]\nhost = "127.0.0.1"\n')

        assert problems_of(path) == [f"{path}: sources: required key is missing"]

    def test_empty_sources_table_is_rejected(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, "[sources]\n")

        assert problems_of(path) == [
            f"{path}: sources: at least one [sources.NAME] table is required"
        ]

    def test_empty_secrets_list_is_rejected(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, "[sources.x]\nsecrets = []\n")

        assert problems_of(path) == [f"{path}: sources.x.secrets: at least one secret is required"]

    def test_source_without_secrets_is_rejected(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, '[sources.x]\ntolerance = "5m"\n')

        assert problems_of(path) == [f"{path}: sources.x.secrets: required key is missing"]

    @pytest.mark.parametrize("name", ["my source", "a/b", "-leading-dash", "x" * 65])
    def test_source_name_that_is_not_a_url_segment_is_rejected(
        self, tmp_path: Path, name: str
    ) -> None:
        path = write_config(tmp_path, f'[sources."{name}"]\nsecrets = ["s"]\n')

        assert problems_of(path) == [
            f'{path}: sources.{name}: {SOURCE_NAME_EXPECTED}, got "{name}"'
        ]

    @pytest.mark.parametrize("name", ["default", "Frame.io", "team_2-prod", "x" * 64])
    def test_source_name_made_of_url_safe_characters_is_accepted(
        self, tmp_path: Path, name: str
    ) -> None:
        path = write_config(tmp_path, f'[sources."{name}"]\nsecrets = ["s"]\n')

        assert list(load_config(path, environ={}).sources) == [name]


class TestEnvSecrets:
    def test_unset_variable_names_the_reference_and_the_variable(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, '[sources.default]\nsecrets = ["env:FRAMEIO_SECRET"]\n')

        problems = problems_of(path, environ={"OTHER": HIDDEN})

        assert problems == [
            f"{path}: sources.default.secrets[0]: environment variable FRAMEIO_SECRET "
            'is not set (from "env:FRAMEIO_SECRET")'
        ]
        assert HIDDEN not in problems[0]

    def test_set_variable_provides_the_value(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, '[sources.default]\nsecrets = ["env:FRAMEIO_SECRET"]\n')

        config = load_config(path, environ={"FRAMEIO_SECRET": HIDDEN})

        assert config.sources["default"].secret_values() == [HIDDEN]

    def test_repr_of_the_secret_shows_the_reference_not_the_value(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, '[sources.default]\nsecrets = ["env:FRAMEIO_SECRET"]\n')

        secret = load_config(path, environ={"FRAMEIO_SECRET": HIDDEN}).sources["default"].secrets[0]

        assert repr(secret) == "Secret('env:FRAMEIO_SECRET')"
        assert str(secret) == "Secret('env:FRAMEIO_SECRET')"
        assert secret.reveal() == HIDDEN

    def test_variable_set_to_empty_string_is_rejected(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, '[sources.default]\nsecrets = ["env:FRAMEIO_SECRET"]\n')

        assert problems_of(path, environ={"FRAMEIO_SECRET": ""}) == [
            f'{path}: sources.default.secrets[0]: the secret from "env:FRAMEIO_SECRET" is empty'
        ]

    def test_the_injected_environ_is_used_not_the_process_environment(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("FRAMEIO_SECRET", "from-the-process")
        path = write_config(tmp_path, '[sources.default]\nsecrets = ["env:FRAMEIO_SECRET"]\n')

        config = load_config(path, environ={"FRAMEIO_SECRET": "from-the-mapping"})

        assert config.sources["default"].secret_values() == ["from-the-mapping"]


class TestFileSecrets:
    def test_absolute_path_is_read(self, tmp_path: Path) -> None:
        secret_file = tmp_path / "elsewhere" / "webhook.secret"
        secret_file.parent.mkdir()
        secret_file.write_text(HIDDEN)
        path = write_config(
            tmp_path / "conf", f"[sources.default]\nsecrets = ['file:{secret_file}']\n"
        )

        secret = load_config(path, environ={}).sources["default"].secrets[0]

        assert secret.reveal() == HIDDEN
        assert repr(secret) == f"Secret('file:{secret_file}')"

    def test_relative_path_resolves_against_the_config_files_folder(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        (tmp_path / "conf").mkdir()
        (tmp_path / "conf" / "webhook.secret").write_text("next-to-the-config")
        (tmp_path / "cwd").mkdir()
        (tmp_path / "cwd" / "webhook.secret").write_text("in-the-working-directory")
        monkeypatch.chdir(tmp_path / "cwd")
        path = write_config(
            tmp_path / "conf", '[sources.default]\nsecrets = ["file:webhook.secret"]\n'
        )

        config = load_config(path, environ={})

        assert config.sources["default"].secret_values() == ["next-to-the-config"]

    def test_relative_config_path_still_resolves_against_its_own_folder(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        (tmp_path / "conf").mkdir()
        (tmp_path / "conf" / "webhook.secret").write_text("next-to-the-config")
        write_config(tmp_path / "conf", '[sources.default]\nsecrets = ["file:webhook.secret"]\n')
        monkeypatch.chdir(tmp_path)

        config = load_config(Path("conf/config.toml"), environ={})

        assert config.sources["default"].secret_values() == ["next-to-the-config"]
        assert config.base_dir == tmp_path / "conf"

    def test_relative_path_resolves_against_state_directory_when_set(self, tmp_path: Path) -> None:
        (tmp_path / "conf").mkdir()
        (tmp_path / "conf" / "webhook.secret").write_text("next-to-the-config")
        (tmp_path / "state").mkdir()
        (tmp_path / "state" / "webhook.secret").write_text("in-the-state-directory")
        path = write_config(
            tmp_path / "conf", '[sources.default]\nsecrets = ["file:webhook.secret"]\n'
        )

        config = load_config(path, environ={"STATE_DIRECTORY": str(tmp_path / "state")})

        assert config.sources["default"].secret_values() == ["in-the-state-directory"]

    def test_state_directory_with_two_entries_uses_the_first(self, tmp_path: Path) -> None:
        for folder in ("first", "second"):
            (tmp_path / folder).mkdir()
            (tmp_path / folder / "webhook.secret").write_text(f"from-{folder}")
        path = write_config(
            tmp_path / "conf", '[sources.default]\nsecrets = ["file:webhook.secret"]\n'
        )
        state = f"{tmp_path / 'first'}:{tmp_path / 'second'}"

        config = load_config(path, environ={"STATE_DIRECTORY": state})

        assert config.sources["default"].secret_values() == ["from-first"]
        assert config.base_dir == tmp_path / "first"

    def test_missing_file_is_an_error_naming_the_reference(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, '[sources.default]\nsecrets = ["file:missing.secret"]\n')

        assert problems_of(path) == [
            f'{path}: sources.default.secrets[0]: cannot read "file:missing.secret" '
            f"({tmp_path / 'missing.secret'}): No such file or directory"
        ]

    def test_directory_instead_of_file_is_an_error_naming_the_reference(
        self, tmp_path: Path
    ) -> None:
        (tmp_path / "secrets.d").mkdir()
        path = write_config(tmp_path, '[sources.default]\nsecrets = ["file:secrets.d"]\n')

        assert problems_of(path) == [
            f'{path}: sources.default.secrets[0]: cannot read "file:secrets.d" '
            f"({tmp_path / 'secrets.d'}): Is a directory"
        ]

    def test_non_utf8_file_is_an_error_naming_the_reference(self, tmp_path: Path) -> None:
        (tmp_path / "webhook.secret").write_bytes(b"\xff\xfe\x00")
        path = write_config(tmp_path, '[sources.default]\nsecrets = ["file:webhook.secret"]\n')

        assert problems_of(path) == [
            f'{path}: sources.default.secrets[0]: "file:webhook.secret" '
            f"({tmp_path / 'webhook.secret'}) is not UTF-8 text"
        ]

    @pytest.mark.parametrize("ending", ["\n", "\r\n", "\n\n"])
    def test_trailing_newline_is_not_part_of_the_secret(self, tmp_path: Path, ending: str) -> None:
        (tmp_path / "webhook.secret").write_bytes(f"{HIDDEN}{ending}".encode())
        path = write_config(tmp_path, '[sources.default]\nsecrets = ["file:webhook.secret"]\n')

        assert load_config(path, environ={}).sources["default"].secret_values() == [HIDDEN]

    def test_file_holding_only_a_newline_is_an_empty_secret(self, tmp_path: Path) -> None:
        (tmp_path / "webhook.secret").write_text("\n")
        path = write_config(tmp_path, '[sources.default]\nsecrets = ["file:webhook.secret"]\n')

        assert problems_of(path) == [
            f'{path}: sources.default.secrets[0]: the secret from "file:webhook.secret" is empty'
        ]


class TestSecretFilesThatAreNotSecrets:
    """Only a regular file of at most 64 KiB is read as a secret: anything else is refused
    at once, naming the key, before a byte is read."""

    def _load_without_waiting(self, path: Path, fifo: Path | None = None) -> list[str]:
        with ThreadPoolExecutor(max_workers=1) as pool:
            future = pool.submit(problems_of, path)
            try:
                return future.result(timeout=5)
            finally:
                if fifo is not None and not future.done():
                    # Release a reader stuck on the pipe so the test ends (it has failed).
                    os.close(os.open(fifo, os.O_WRONLY))

    def test_named_pipe_is_refused_without_waiting_for_a_writer(self, tmp_path: Path) -> None:
        fifo = tmp_path / "webhook.secret"
        os.mkfifo(fifo)
        path = write_config(tmp_path, '[sources.default]\nsecrets = ["file:webhook.secret"]\n')

        assert self._load_without_waiting(path, fifo) == [
            f'{path}: sources.default.secrets[0]: cannot read "file:webhook.secret" '
            f"({fifo}): it is a named pipe, not a regular file"
        ]

    def test_a_device_is_refused(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, '[sources.default]\nsecrets = ["file:/dev/zero"]\n')

        assert self._load_without_waiting(path) == [
            f'{path}: sources.default.secrets[0]: cannot read "file:/dev/zero" '
            "(/dev/zero): it is a character device, not a regular file"
        ]

    def test_a_file_over_64_kib_is_refused(self, tmp_path: Path) -> None:
        (tmp_path / "webhook.secret").write_text("x" * (65 * 1024))
        path = write_config(tmp_path, '[sources.default]\nsecrets = ["file:webhook.secret"]\n')

        assert problems_of(path) == [
            f'{path}: sources.default.secrets[0]: cannot read "file:webhook.secret" '
            f"({tmp_path / 'webhook.secret'}): it is larger than 64 KiB; "
            "a secret file holds one secret"
        ]

    def test_a_file_of_exactly_64_kib_is_read(self, tmp_path: Path) -> None:
        (tmp_path / "webhook.secret").write_text("x" * (64 * 1024))
        path = write_config(tmp_path, '[sources.default]\nsecrets = ["file:webhook.secret"]\n')

        assert load_config(path, environ={}).sources["default"].secret_values() == [
            "x" * (64 * 1024)
        ]

    def test_a_credential_is_read_the_same_way(self, tmp_path: Path) -> None:
        (tmp_path / "creds").mkdir()
        os.mkfifo(tmp_path / "creds" / "webhook")
        path = write_config(tmp_path, '[sources.default]\nsecrets = ["credential:webhook"]\n')

        with ThreadPoolExecutor(max_workers=1) as pool:
            future = pool.submit(
                problems_of, path, {"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")}
            )
            try:
                problems = future.result(timeout=5)
            finally:
                if not future.done():
                    os.close(os.open(tmp_path / "creds" / "webhook", os.O_WRONLY))

        assert problems == [
            f'{path}: sources.default.secrets[0]: cannot read "credential:webhook" '
            f"({tmp_path / 'creds' / 'webhook'}): it is a named pipe, not a regular file"
        ]


class TestCredentialSecrets:
    def test_credential_is_read_from_credentials_directory(self, tmp_path: Path) -> None:
        (tmp_path / "creds").mkdir()
        (tmp_path / "creds" / "webhook").write_text(HIDDEN + "\n")
        path = write_config(tmp_path, '[sources.default]\nsecrets = ["credential:webhook"]\n')

        config = load_config(path, environ={"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")})

        secret = config.sources["default"].secrets[0]
        assert secret.reveal() == HIDDEN
        assert repr(secret) == "Secret('credential:webhook')"

    @pytest.mark.parametrize("environ", [{}, {"CREDENTIALS_DIRECTORY": ""}])
    def test_credential_without_credentials_directory_is_an_error(
        self, tmp_path: Path, environ: dict[str, str]
    ) -> None:
        path = write_config(tmp_path, '[sources.default]\nsecrets = ["credential:webhook"]\n')

        assert problems_of(path, environ=environ) == [
            f'{path}: sources.default.secrets[0]: "credential:webhook" needs '
            "$CREDENTIALS_DIRECTORY, which is not set (it is set by systemd's LoadCredential=)"
        ]

    @pytest.mark.parametrize("name", ["../webhook", "sub/webhook", "..", "."])
    def test_credential_name_that_leaves_the_directory_is_rejected(
        self, tmp_path: Path, name: str
    ) -> None:
        (tmp_path / "creds" / "sub").mkdir(parents=True)
        (tmp_path / "creds" / "sub" / "webhook").write_text("x")
        (tmp_path / "webhook").write_text("x")
        path = write_config(tmp_path, f'[sources.default]\nsecrets = ["credential:{name}"]\n')

        problems = problems_of(path, environ={"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")})

        assert problems == [
            f'{path}: sources.default.secrets[0]: "credential:{name}": '
            "a credential name cannot contain '/'"
        ]

    def test_missing_credential_is_an_error_naming_the_reference(self, tmp_path: Path) -> None:
        (tmp_path / "creds").mkdir()
        path = write_config(tmp_path, '[sources.default]\nsecrets = ["credential:webhook"]\n')

        problems = problems_of(path, environ={"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")})

        assert problems == [
            f'{path}: sources.default.secrets[0]: cannot read "credential:webhook" '
            f"({tmp_path / 'creds' / 'webhook'}): No such file or directory"
        ]


class TestLiteralSecrets:
    def test_literal_is_used_as_is_and_shown_as_literal(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, f'[sources.default]\nsecrets = ["{HIDDEN}"]\n')

        secret = load_config(path, environ={}).sources["default"].secrets[0]

        assert secret.reveal() == HIDDEN
        assert repr(secret) == "Secret('<literal>')"

    def test_empty_literal_is_rejected(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, '[sources.default]\nsecrets = ["ok", ""]\n')

        assert problems_of(path) == [f"{path}: sources.default.secrets[1]: the secret is empty"]

    def test_integer_secret_is_rejected_without_echoing_it(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, "[sources.default]\nsecrets = [123456789]\n")

        problems = problems_of(path)

        assert problems == [
            f"{path}: sources.default.secrets[0]: {SECRET_EXPECTED}, got an integer"
        ]
        assert "123456789" not in problems[0]

    def test_secret_written_as_string_not_list_is_rejected_without_echoing_it(
        self, tmp_path: Path
    ) -> None:
        path = write_config(tmp_path, f'[sources.default]\nsecrets = "{HIDDEN}"\n')

        problems = problems_of(path)

        assert problems == [f"{path}: sources.default.secrets: expected an array, got a string"]
        assert HIDDEN not in problems[0]

    def test_source_written_as_a_string_is_rejected_without_echoing_it(
        self, tmp_path: Path
    ) -> None:
        path = write_config(tmp_path, f'[sources]\ndefault = "{HIDDEN}"\n')

        problems = problems_of(path)

        assert problems == [f"{path}: sources.default: expected a table, got a string"]
        assert HIDDEN not in problems[0]

    @pytest.mark.parametrize("kind", ["env", "file", "credential"])
    def test_reference_without_a_name_is_an_error_not_a_literal(
        self, tmp_path: Path, kind: str
    ) -> None:
        path = write_config(tmp_path, f'[sources.default]\nsecrets = ["{kind}:"]\n')

        assert problems_of(path, environ={"CREDENTIALS_DIRECTORY": str(tmp_path)}) == [
            f'{path}: sources.default.secrets[0]: "{kind}:" names no {kind}'
        ]


class TestSecretsStayHidden:
    """A valid secret next to a broken key: the error path runs, the secret stays out."""

    @pytest.mark.parametrize(
        ("reference", "environ"),
        [(HIDDEN, {}), ("env:FRAMEIO_SECRET", {"FRAMEIO_SECRET": HIDDEN})],
    )
    def test_secret_never_appears_in_errors(
        self, tmp_path: Path, reference: str, environ: dict[str, str]
    ) -> None:
        path = write_config(
            tmp_path,
            f"""
            [server]
            port = "not a port"
            [sources.default]
            secrets = ["{reference}"]
            tolerance = "five"
            bogus = 1
            [sources.other]
            secrets = ["{reference}", ""]
            """,
        )

        with pytest.raises(ConfigError) as excinfo:
            load_config(path, environ=environ)

        assert len(excinfo.value.problems) == 4
        assert HIDDEN not in str(excinfo.value)
        assert HIDDEN not in repr(excinfo.value)
        assert all(HIDDEN not in problem for problem in excinfo.value.problems)

    def test_secret_from_file_never_appears_in_errors(self, tmp_path: Path) -> None:
        (tmp_path / "webhook.secret").write_text(HIDDEN)
        path = write_config(
            tmp_path,
            '[log]\nlevel = "loud"\n[sources.default]\nsecrets = ["file:webhook.secret"]\n',
        )

        with pytest.raises(ConfigError) as excinfo:
            load_config(path, environ={})

        assert excinfo.value.problems == [
            f"{path}: log.level: input should be 'debug', 'info', 'warning' or 'error', "
            'got "loud"'
        ]
        assert HIDDEN not in str(excinfo.value)

    def test_secret_never_appears_in_repr_or_str_of_the_config(self, tmp_path: Path) -> None:
        (tmp_path / "webhook.secret").write_text(HIDDEN + "-file")
        path = write_config(
            tmp_path,
            f"""
            [sources.default]
            secrets = ["{HIDDEN}-literal", "env:FRAMEIO_SECRET", "file:webhook.secret"]
            """,
        )

        config = load_config(path, environ={"FRAMEIO_SECRET": HIDDEN + "-env"})

        source = config.sources["default"]
        assert source.secret_values() == [HIDDEN + "-literal", HIDDEN + "-env", HIDDEN + "-file"]
        for text in (repr(config), str(config), repr(source), str(source), repr(source.secrets)):
            assert HIDDEN not in text
        assert (
            "Secret('<literal>'), Secret('env:FRAMEIO_SECRET'), Secret('file:webhook.secret')"
            in (repr(config))
        )

    def test_secrets_compare_by_value_without_exposing_it(self) -> None:
        assert Secret("env:A", HIDDEN) == Secret("file:b", HIDDEN)
        assert Secret("env:A", HIDDEN) != Secret("env:A", "other")
        assert hash(Secret("env:A", HIDDEN)) == hash(Secret("file:b", HIDDEN))


class TestDevelopmentSecret:
    @pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "example.com", "::", ""])
    def test_dev_secret_on_a_non_loopback_host_is_refused(self, tmp_path: Path, host: str) -> None:
        path = write_config(
            tmp_path,
            f'[server]\nhost = "{host}"\n[sources.default]\nsecrets = ["{DEV_SECRET}"]\n',
        )

        assert problems_of(path) == [dev_secret_refusal(path, host)]

    @pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "localhost"])
    def test_dev_secret_on_a_loopback_host_is_accepted(self, tmp_path: Path, host: str) -> None:
        path = write_config(
            tmp_path,
            f'[server]\nhost = "{host}"\n[sources.default]\nsecrets = ["{DEV_SECRET}"]\n',
        )

        config = load_config(path, environ={})

        assert config.sources["default"].secret_values() == [DEV_SECRET]

    def test_dev_secret_arriving_through_env_is_also_refused(self, tmp_path: Path) -> None:
        path = write_config(
            tmp_path,
            '[server]\nhost = "0.0.0.0"\n[sources.hooks]\nsecrets = ["env:FRAMEIO_SECRET"]\n',
        )

        problems = problems_of(path, environ={"FRAMEIO_SECRET": DEV_SECRET})

        assert problems == [dev_secret_refusal(path, "0.0.0.0", source="hooks")]

    def test_dev_secret_kept_for_rotation_is_also_refused(self, tmp_path: Path) -> None:
        path = write_config(
            tmp_path,
            f"""
            [server]
            host = "192.0.2.1"
            [sources.first]
            secrets = ["a-real-secret"]
            [sources.second]
            secrets = ["another-real-secret", "{DEV_SECRET}"]
            """,
        )

        assert problems_of(path) == [dev_secret_refusal(path, "192.0.2.1", source="second")]

    def test_shipped_config_with_a_public_host_is_refused(self, tmp_path: Path) -> None:
        shipped = SHIPPED_CONFIG.read_text(encoding="utf-8")
        assert 'host = "127.0.0.1"' in shipped
        path = tmp_path / "config.toml"
        path.write_text(shipped.replace('host = "127.0.0.1"', 'host = "0.0.0.0"'))

        assert problems_of(path) == [dev_secret_refusal(path, "0.0.0.0")]

    @pytest.mark.parametrize("bound", ["0.0.0.0", "::", "192.0.2.1"])
    def test_dev_secret_is_refused_while_a_bound_socket_is_not_loopback(
        self, tmp_path: Path, bound: str
    ) -> None:
        path = write_config(tmp_path, f'[sources.default]\nsecrets = ["{DEV_SECRET}"]\n')
        config = load_config(path, environ={})  # server.host is loopback: the file passes

        assert dev_secret_problem(config, ["127.0.0.1", bound]) == (
            "sources.default.secrets: the development secret from the shipped config.toml "
            f'is refused while the daemon listens on "{bound}", not a loopback address '
            "(a new server.host takes effect only after a restart); "
            "set the secret Frame.io gave you for this webhook"
        )

    def test_dev_secret_is_accepted_while_every_bound_socket_is_loopback(
        self, tmp_path: Path
    ) -> None:
        path = write_config(tmp_path, f'[sources.default]\nsecrets = ["{DEV_SECRET}"]\n')
        config = load_config(path, environ={})

        assert dev_secret_problem(config, ["127.0.0.1", "::1"]) is None

    def test_a_public_socket_is_fine_without_the_dev_secret(self, tmp_path: Path) -> None:
        config = load_config(write_config(tmp_path, MINIMAL_SOURCE), environ={})

        assert dev_secret_problem(config, ["0.0.0.0"]) is None

    def test_real_secret_on_a_public_host_is_accepted(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, '[server]\nhost = "0.0.0.0"\n' + MINIMAL_SOURCE)

        assert load_config(path, environ={}).server.host == "0.0.0.0"


class TestSeveralProblems:
    def test_every_problem_in_the_file_is_reported_at_once(self, tmp_path: Path) -> None:
        path = write_config(
            tmp_path,
            """
            colour = "blue"
            [server]
            prot = 8080
            max_body_bytes = 0
            [log]
            level = "loud"
            format = "xml"
            [sources.default]
            secrets = ["env:UNSET_VARIABLE", ""]
            tolerance = "five"
            [sources."bad name"]
            secrets = ["x"]
            """,
        )

        problems = problems_of(path)

        assert len(problems) == 9
        assert sorted(problems) == sorted(
            [
                f"{path}: colour: unknown key",
                f'{path}: server.prot: unknown key (did you mean "port"?)',
                f"{path}: server.max_body_bytes: input should be greater than 0, got 0",
                f"{path}: log.level: input should be 'debug', 'info', 'warning' or 'error', "
                'got "loud"',
                f"{path}: log.format: input should be 'auto', 'json' or 'console', got \"xml\"",
                f"{path}: sources.default.secrets[0]: environment variable UNSET_VARIABLE "
                'is not set (from "env:UNSET_VARIABLE")',
                f"{path}: sources.default.secrets[1]: the secret is empty",
                f'{path}: sources.default.tolerance: {DURATION_EXPECTED}, got "five"',
                f'{path}: sources.bad name: {SOURCE_NAME_EXPECTED}, got "bad name"',
            ]
        )

    def test_dev_secret_refusal_waits_until_the_file_is_otherwise_valid(
        self, tmp_path: Path
    ) -> None:
        """The host check needs a valid config; it must not hide schema mistakes."""
        path = write_config(
            tmp_path,
            f'[server]\nhost = "0.0.0.0"\nport = 70000\n'
            f'[sources.default]\nsecrets = ["{DEV_SECRET}"]\n',
        )

        assert problems_of(path) == [
            f"{path}: server.port: input should be less than or equal to 65535, got 70000"
        ]


class TestUnreadableConfigFile:
    def test_toml_syntax_error_names_the_file_and_the_line(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, "[server]\nport = = 8080\n")

        assert problems_of(path) == [f"{path}: not valid TOML: Invalid value (at line 2, column 8)"]

    def test_missing_file_is_named(self, tmp_path: Path) -> None:
        path = tmp_path / "nowhere" / "config.toml"

        assert problems_of(path) == [
            f"{path}: cannot read the config file: No such file or directory"
        ]

    def test_non_utf8_file_is_named(self, tmp_path: Path) -> None:
        path = tmp_path / "config.toml"
        path.write_bytes(b'[server]\nhost = "\xff\xfe"\n')

        assert problems_of(path) == [f"{path}: the config file is not UTF-8 text"]

    def test_path_is_reported_as_given(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.chdir(tmp_path)
        write_config(tmp_path, MINIMAL_SOURCE + 'tolerance = "five"\n')

        assert problems_of(Path("config.toml")) == [
            f'config.toml: sources.default.tolerance: {DURATION_EXPECTED}, got "five"'
        ]


class TestPaths:
    def test_base_dir_is_the_config_files_folder(self, tmp_path: Path) -> None:
        path = write_config(tmp_path / "conf", MINIMAL_SOURCE)

        config = load_config(path, environ={})

        assert config.path == path
        assert config.base_dir == tmp_path / "conf"
        assert config.resolve_path("spool") == tmp_path / "conf" / "spool"
        assert config.resolve_path(Path("a/b.db")) == tmp_path / "conf" / "a" / "b.db"

    def test_base_dir_is_state_directory_when_set(self, tmp_path: Path) -> None:
        path = write_config(tmp_path / "conf", MINIMAL_SOURCE)

        config = load_config(path, environ={"STATE_DIRECTORY": str(tmp_path / "state")})

        assert config.base_dir == tmp_path / "state"
        assert config.resolve_path("spool") == tmp_path / "state" / "spool"

    def test_empty_state_directory_falls_back_to_the_config_folder(self, tmp_path: Path) -> None:
        path = write_config(tmp_path / "conf", MINIMAL_SOURCE)

        config = load_config(path, environ={"STATE_DIRECTORY": ""})

        assert config.base_dir == tmp_path / "conf"

    def test_absolute_paths_are_left_alone(self, tmp_path: Path) -> None:
        path = write_config(tmp_path / "conf", MINIMAL_SOURCE)

        config = load_config(path, environ={"STATE_DIRECTORY": str(tmp_path / "state")})

        assert config.resolve_path("/var/lib/frameiod/spool") == Path("/var/lib/frameiod/spool")

    def test_config_built_without_load_config_resolves_against_the_working_directory(
        self,
    ) -> None:
        config = Config.model_validate({"sources": {"x": {"secrets": ["s"]}}})

        assert config.base_dir == Path()
        assert config.resolve_path("spool") == Path("spool")


class TestFindConfig:
    def test_default_search_order_is_working_directory_then_etc(self) -> None:
        assert (Path("config.toml"), Path("/etc/frameiod/config.toml")) == DEFAULT_CONFIG_PATHS

    @pytest.mark.parametrize("explicit", ["some/where.toml", Path("some/where.toml")])
    def test_explicit_path_is_used_even_if_it_does_not_exist(self, explicit: str | Path) -> None:
        assert find_config(explicit) == Path("some/where.toml")

    def test_default_is_config_toml_in_the_working_directory(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        etc = write_config(tmp_path / "etc", MINIMAL_SOURCE)
        write_config(tmp_path / "cwd", MINIMAL_SOURCE)
        monkeypatch.chdir(tmp_path / "cwd")
        monkeypatch.setattr(config_loading, "DEFAULT_CONFIG_PATHS", (Path("config.toml"), etc))

        assert find_config(None) == Path("config.toml")

    def test_default_falls_back_to_the_system_wide_file(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        etc = write_config(tmp_path / "etc", MINIMAL_SOURCE)
        (tmp_path / "cwd").mkdir()
        monkeypatch.chdir(tmp_path / "cwd")
        monkeypatch.setattr(config_loading, "DEFAULT_CONFIG_PATHS", (Path("config.toml"), etc))

        assert find_config(None) == etc

    def test_default_when_nothing_exists_is_the_first_candidate(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.chdir(tmp_path)
        monkeypatch.setattr(
            config_loading,
            "DEFAULT_CONFIG_PATHS",
            (Path("config.toml"), tmp_path / "etc" / "config.toml"),
        )

        assert find_config(None) == Path("config.toml")


class TestRedisBackend:
    def test_redis_url_is_a_secret_reference_and_defaults_to_the_local_redis(
        self, tmp_path: Path
    ) -> None:
        url = f"redis://:{HIDDEN}@10.0.0.5:6379/2"
        path = write_config(
            tmp_path, '[spool]\nbackend = "redis"\nredis_url = "env:REDIS_URL"\n' + MINIMAL_SOURCE
        )
        config = load_config(path, environ={"REDIS_URL": url})
        assert config.spool.backend == "redis"
        assert config.spool.redis_url.reveal() == url
        assert HIDDEN not in repr(config.spool)
        default = load_config(write_config(tmp_path / "d", MINIMAL_SOURCE), environ={})
        assert default.spool.redis_url.reveal() == "redis://127.0.0.1:6379/0"
        assert default.spool.stream_prefix == "frameiod"

    def test_choosing_redis_without_the_package_names_the_extra_to_install(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        real_find_spec = importlib.util.find_spec
        monkeypatch.setattr(
            importlib.util,
            "find_spec",
            lambda name, *a: None if name == "redis" else real_find_spec(name, *a),
        )
        path = write_config(tmp_path, '[spool]\nbackend = "redis"\n' + MINIMAL_SOURCE)
        assert problems_of(path) == [
            f'{path}: spool.backend: "redis" needs the redis package: '
            "pip install 'frameiod[redis]', got \"redis\""
        ]
