"""The side-car driver host: any driver in its own process, behind a watchdog."""
