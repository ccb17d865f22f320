"""The HTTP submission API for teams (see issue: Competition service)."""
