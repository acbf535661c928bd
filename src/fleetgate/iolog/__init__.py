"""iolog."""
