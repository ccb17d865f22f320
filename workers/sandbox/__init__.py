"""bbo-arena: sandbox."""
