"""Service functions, one per business rule, shared by the CLI, the gateway and the console."""
