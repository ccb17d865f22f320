"""The organizers' Textual console (see issue: Organizer console)."""
