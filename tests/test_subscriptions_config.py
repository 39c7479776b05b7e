"""The `[subscriptions]` table is checked on its type: each problem with its key path, and the
relay's credentials never repeated in a message."""

from __future__ import annotations

from datetime import timedelta

import pytest

from monitor.plan.errors import ConfigError
from monitor.plan.load import validate_config

CHANNELS = [
    {
        "id": "web",
        "name": "网站",
        "kind": "web",
        "group": "online",
        "services": [{"id": "pension", "name": "养老"}],
    }
]
GOOD = {
    "smtp": "smtp+starttls://relay.example.gov.cn:587",
    "username": "${SMTP_USER}",
    "password": "${SMTP_PASSWORD}",
    "from": "湖北人社 <noreply@example.gov.cn>",
    "public_url": "https://status.example.gov.cn/",
}
ENV = {"SMTP_USER": "relay-user", "SMTP_PASSWORD": "hunter2-secret"}


def problems(table: dict, env: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        validate_config({"channels": CHANNELS, "subscriptions": table}, env=env or ENV)
    return caught.value.problems


def test_a_good_table_is_read_with_the_environment_filled_in() -> None:
    config = validate_config({"channels": CHANNELS, "subscriptions": GOOD}, env=ENV)
    settings = config.subscriptions
    assert settings is not None
    assert (settings.host, settings.port, settings.security) == (
        "relay.example.gov.cn",
        587,
        "starttls",
    )
    assert settings.password == "hunter2-secret"
    assert settings.public_url == "https://status.example.gov.cn"
    assert settings.remind_before == (timedelta(days=1), timedelta(hours=1))
    assert "hunter2" not in repr(settings)


@pytest.mark.parametrize(
    ("scheme", "security", "port"),
    [("smtp", "plain", 25), ("smtp+starttls", "starttls", 587), ("smtps", "tls", 465)],
)
def test_each_scheme_says_how_the_session_is_protected(scheme: str, security: str, port: int):
    table = {**GOOD, "smtp": f"{scheme}://relay.example.gov.cn"}
    settings = validate_config({"channels": CHANNELS, "subscriptions": table}, env=ENV)
    assert settings.subscriptions is not None
    assert (settings.subscriptions.security, settings.subscriptions.port) == (security, port)


def test_every_problem_has_its_key_path() -> None:
    found = problems(
        {
            **GOOD,
            "smtp": "https://relay.example.gov.cn",
            "from": "nobody",
            "public_url": "ftp://x",
            "remind_before": ["1d", "soon"],
            "colour": "red",
        }
    )
    text = "\n".join(found)
    for path in ("smtp", "from", "public_url", "remind_before[1]", "colour"):
        assert f"channels.toml: subscriptions.{path}:" in text, text


def test_credentials_are_never_repeated() -> None:
    found = problems({**GOOD, "smtp": "smtp://user:hunter2-secret@relay"})
    assert found and "hunter2" not in "\n".join(found)
    found = problems({**GOOD, "password": "${MISSING}"})
    assert '"MISSING"' in found[0] and "subscriptions.password" in found[0]
