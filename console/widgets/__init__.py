"""Small widgets and cell renderers of the console."""
