"""A team's submission archive: its bytes checked (zip_checks, bundled, source_check), stored by digest,
fetched and unpacked (archive). Intake and the worker share it."""
