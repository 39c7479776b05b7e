"""channel-monitor: holds every service channel to a published cutover plan."""

__version__ = "0.1.0"
