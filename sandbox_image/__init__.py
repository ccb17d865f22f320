"""bbo-arena: sandbox_image."""
