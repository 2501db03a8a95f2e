"""The ASGI entry point for uvicorn: settings and logging read once per process."""

from counter_svc.app import create_app
from counter_svc.faults import ApiFaults
from counter_svc.logs import configure_logging
from counter_svc.settings import Settings

_settings = Settings.from_env()
configure_logging(_settings.log_format, _settings.log_level)
_faults = ApiFaults.from_env()  # API_FAULT: tests only
app = create_app(_settings, hook=_faults.hit if _faults.armed else None, freeze_gc=True)
