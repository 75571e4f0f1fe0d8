"""Renderers: the kernel plan as source text for one target each."""
