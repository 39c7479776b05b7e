"""The demo: the 2022 Hubei cutover replayed against simulated channels on one machine."""
