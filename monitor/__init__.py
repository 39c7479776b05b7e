"""channel-monitor: holds every service channel to a published cutover plan."""

__version__ = "0.1.0"

#: The default port of `run` (and of the demo): /healthz, /metrics and the site. Here, not in
#: daemon.py, so that commands that only read the plan need not import the daemon's libraries.
DEFAULT_PORT = 9851
