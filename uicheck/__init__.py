"""`make ui-check`: the Temporal web UI checked in headless Chromium (see __main__.py)."""
