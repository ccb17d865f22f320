"""bbo-arena: cli."""
