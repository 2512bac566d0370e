"""Fixtures shared by the operator commands' tests."""

from tests.support.alert_receiver import receiver  # noqa: F401 (a fixture: the alerts' endpoint)
