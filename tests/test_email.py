"""The include_email option: what it adds, what it leaves out, and its generated tests.

Once per broker, a project with include_email runs its own `-m email` tests in the shared venv:
a real SMTP server (aiosmtpd) started by those tests, the real worker, broker and PostgreSQL.
"""

from __future__ import annotations

import re

import helpers
import pytest
from conftest import RenderCache, RunFeatureTests
from helpers import Combo

pytestmark = pytest.mark.email

EMAIL_TASKS = {
    "email:send": "send_email_task",
    "email:send_bulk": "send_bulk_email_task",
    "email:welcome": "send_welcome_email_task",
    "email:password_reset": "send_password_reset_email_task",
    "email:verification": "send_verification_email_task",
    "email:notification": "send_notification_email_task",
    "email:system_wide_notification": "send_system_wide_notification_emails_task",
}
MESSAGE_TYPES = ("welcome", "password_reset", "verification", "notification")
SMTP_SETTINGS = (
    "SMTP_HOST",
    "SMTP_PORT",
    "SMTP_USER",
    "SMTP_PASSWORD",
    "SMTP_SECURITY",
    "SMTP_FROM",
    "SMTP_TIMEOUT_SECONDS",
)

# One project per broker, and between them both result backends and both retry answers.
_PREFERRED = {
    "redis": {"result_backend": "redis", "include_retry": True},
    "rabbitmq": {"result_backend": "none", "include_retry": False},
}


EMAIL_COMBOS = [
    helpers.pick_combo({"broker": broker, "include_email": True}, preferred)
    for broker, preferred in _PREFERRED.items()
]
PLAIN_COMBOS = [
    helpers.pick_combo({"broker": broker, "include_email": False}, preferred)
    for broker, preferred in _PREFERRED.items()
]


@pytest.mark.parametrize("combo", EMAIL_COMBOS, ids=str)
def test_the_option_adds_the_module_tasks_templates_settings_and_users(
    render_cache: RenderCache, combo: Combo
) -> None:
    rendered = render_cache(combo)

    tasks = rendered.read("src/{pkg}/modules/email/tasks.py")
    for name, function in EMAIL_TASKS.items():
        assert re.search(rf'@register_task\("{name}"[^)]*\)\nasync def {function}\(', tasks), name
    templates = rendered.package_dir / "modules" / "email" / "templates"
    for kind in MESSAGE_TYPES:
        for part in ("subject.txt", "body.txt", "body.html"):
            assert (templates / kind / part).is_file(), f"{kind}/{part}"
    env_example = rendered.read(".env.example")
    for variable in SMTP_SETTINGS:
        assert re.search(rf"^{variable}=", env_example, re.MULTILINE), variable
    settings = rendered.read("src/{pkg}/infrastructure/config/settings.py")
    for variable in SMTP_SETTINGS:
        assert f"    {variable.lower()}:" in settings, variable
    migration = rendered.read("migrations/versions/0005_users.py")
    assert 'revision: str = "0005_users"' in migration
    assert 'down_revision: str | None = "0001"' in migration
    assert '("users",)' in migration
    assert (rendered.package_dir / "modules" / "users" / "models.py").is_file()
    readme = rendered.read("README.md")
    assert "Mailpit" in readme and "127.0.0.1:1025" in readme and "127.0.0.1:8025" in readme
    dependencies = " ".join(combo.derived["dependencies"] + combo.derived["dev_dependencies"])
    for package in ("aiosmtplib", "email-validator", "jinja2", "aiosmtpd"):
        assert package in dependencies, package


@pytest.mark.parametrize("combo", PLAIN_COMBOS, ids=str)
def test_without_the_option_there_is_no_smtp_code_or_dependency(
    render_cache: RenderCache, combo: Combo
) -> None:
    rendered = render_cache(combo)

    assert not (rendered.package_dir / "modules" / "email").exists()
    assert not (rendered.package_dir / "modules" / "users").exists()
    assert not (rendered.path / "migrations" / "versions" / "0005_users.py").exists()
    assert not (rendered.path / "tests" / "smtp_sink.py").exists()
    for relative in (".env.example", "src/{pkg}/infrastructure/config/settings.py", "README.md"):
        assert not re.search(r"smtp", rendered.read(relative), re.IGNORECASE), relative
    dependencies = combo.derived["dependencies"] + combo.derived["dev_dependencies"]
    assert not [d for d in dependencies if d.startswith(("aiosmtplib", "aiosmtpd"))]


@pytest.mark.parametrize("combo", EMAIL_COMBOS, ids=str)
def test_the_generated_email_tests_pass_against_real_services(
    run_feature_tests: RunFeatureTests, combo: Combo
) -> None:
    proc = run_feature_tests(combo, "email")
    # The SMTP round trips, bulk, fan-out and refused connection ran.
    for test in (
        "test_a_message_from_the_api_arrives_with_its_recipients_subject_and_both_parts",
        "test_a_bulk_send_delivers_every_message",
        "test_a_bulk_send_reports_refused_recipients_and_delivers_the_rest",
        "test_the_system_wide_notification_reaches_every_active_user",
        "test_a_refused_connection_is_reported_as_a_failure",
        "test_an_invalid_address_is_a_422_naming_it_and_nothing_is_sent",
        "test_each_message_type_renders_a_subject_a_text_and_an_html_body",
    ):
        assert re.search(rf"::{test}(\[[^\]]*\])? PASSED", proc.stdout), f"{test} did not pass"
