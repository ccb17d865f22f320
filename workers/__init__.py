"""bbo-arena: workers."""
